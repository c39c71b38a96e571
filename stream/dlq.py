"""The dead-letter topic (docs/dlq.md): the original message, unchanged (unless too large), plus
why it failed.

A dead-letter record has the key, value and headers of the message it replaces, then these headers
(values are UTF-8 text; numbers in decimal)::

    dcr.error.code        a stable code of ``stream.validation.CODES``
    dcr.error.field       the field at fault, '' when none
    dcr.error.message     for a human
    dcr.error.stage       decode | validate | expired | api | status (docs/dlq.md#status)
    dcr.source.topic      where the original was consumed
    dcr.source.partition
    dcr.source.offset
    dcr.http.status       API rejections only
    dcr.http.body         API rejections only: at most 1024 bytes of the answer
    dcr.error.truncated   a cut letter only: what was cut (``value``, ``key``, ``headers``)
    dcr.original.size     a cut letter only: the original value's size in bytes

Nothing else is added: no configuration, no token, no request. Every header named ``dcr.*`` is
ours (``is_ours``): an original that already carries some (a replayed record that failed again) has
them replaced, so each appears once and always describes the latest failure, and ``replay`` strips
them all before a record goes back to an input topic.

:class:`DeadLetterProducer` returns from ``send`` only once Kafka acknowledged the write (acks=all,
idempotent), because the consumer commits past a dead-lettered record on the strength of it
(docs/design.md#at-least-once). A letter Kafka refuses as too large is written again cut
(``cuts``): the value reduced to its first ``CUT_VALUE_BYTES``, then the original headers dropped
and the key cut too (those longer than that), so that it fits any sane topic
(docs/dlq.md#too-large). ``classify`` sorts the rest of Kafka's refusals into ``permanent`` ones,
which need an operator, and ``transient`` ones (docs/design.md#bounded-progress); both are
retried, a misjudged one costs a false alarm, never a record.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from confluent_kafka import KafkaError, KafkaException

from stream.errors import DeadLetterError
from stream.producer import AckedProducer
from stream.validation import Rejection

__all__ = [
    "CUT_VALUE_BYTES",
    "ERROR_CODE",
    "ERROR_FIELD",
    "ERROR_MESSAGE",
    "ERROR_STAGE",
    "HEADERS",
    "HTTP_BODY",
    "HTTP_BODY_MAX_BYTES",
    "HTTP_STATUS",
    "ORIGINAL_SIZE",
    "PREFIX",
    "SOURCE_OFFSET",
    "SOURCE_PARTITION",
    "SOURCE_TOPIC",
    "TRUNCATED",
    "DeadLetter",
    "DeadLetterProducer",
    "SourceMessage",
    "build",
    "classify",
    "cuts",
    "dead_letter_headers",
    "is_ours",
]

PREFIX = "dcr."
"""The namespace of the headers dcr-stream writes."""

ERROR_CODE = "dcr.error.code"
ERROR_FIELD = "dcr.error.field"
ERROR_MESSAGE = "dcr.error.message"
ERROR_STAGE = "dcr.error.stage"
SOURCE_TOPIC = "dcr.source.topic"
SOURCE_PARTITION = "dcr.source.partition"
SOURCE_OFFSET = "dcr.source.offset"
HTTP_STATUS = "dcr.http.status"
HTTP_BODY = "dcr.http.body"
TRUNCATED = "dcr.error.truncated"
ORIGINAL_SIZE = "dcr.original.size"


def is_ours(header: str) -> bool:
    """Whether ``header`` is one dcr-stream writes (and so replaces, or strips on replay)."""
    return header.startswith(PREFIX)


HEADERS = (
    ERROR_CODE,
    ERROR_FIELD,
    ERROR_MESSAGE,
    ERROR_STAGE,
    SOURCE_TOPIC,
    SOURCE_PARTITION,
    SOURCE_OFFSET,
    HTTP_STATUS,
    HTTP_BODY,
    TRUNCATED,
    ORIGINAL_SIZE,
)
"""Every header this module writes, in the order it writes them."""

HTTP_BODY_MAX_BYTES = 1024

CUT_VALUE_BYTES = 8192
"""The prefix of the value (and, at the last cut, of the key) a cut dead letter keeps: far more
than a whole valid event (docs/events.md), so a reader sees the fields at fault; with our headers
(under 2 KiB) a cut letter fits any topic whose ``max.message.bytes`` is 20 KiB or more, a
fiftieth of Kafka's default (docs/dlq.md#too-large)."""

_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})
"""Over the producer's ``message.max.bytes`` (raised by ``produce``) or the topic's or broker's
``max.message.bytes`` (the broker's answer)."""

_PERMANENT = frozenset(
    {
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError.POLICY_VIOLATION,
        KafkaError.INVALID_RECORD,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        KafkaError._INVALID_ARG,
        KafkaError._FATAL,
    }
)
"""Refusals that no retry cures: the topic is missing or forbidden, or the cluster refuses this
client or this record; an operator must act (docs/design.md#bounded-progress)."""

Verdict = Literal["too_large", "permanent", "transient"]


def classify(code: int) -> Verdict:
    """What a refused dead-letter write with librdkafka error ``code`` calls for: a cut letter,
    an operator (``permanent``), or only time (``transient``: a broker down, a leader moving,
    librdkafka's own ``message.timeout.ms``)."""
    if code in _TOO_LARGE:
        return "too_large"
    if code in _PERMANENT:
        return "permanent"
    return "transient"


HeaderValue = str | bytes | None
Headers = dict[str, HeaderValue] | list[tuple[str, HeaderValue]]
"""What ``confluent_kafka.Message.headers()`` may return (besides None)."""


class SourceMessage(Protocol):
    """The part of a consumed ``confluent_kafka.Message`` a dead letter is made from."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Headers | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A dead-letter record, ready to produce."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, HeaderValue]]
    cut: tuple[str, ...] = ()
    """What was cut to make it fit (``TRUNCATED``); empty for a whole letter."""


def dead_letter_headers(
    message: SourceMessage,
    rejection: Rejection,
    *,
    http_status: int | None = None,
    http_body: bytes | None = None,
) -> list[tuple[str, bytes]]:
    """The ``dcr.*`` headers for ``message`` rejected as ``rejection`` (docs/dlq.md)."""
    headers = [
        (ERROR_CODE, rejection.code.encode()),
        (ERROR_FIELD, (rejection.field or "").encode()),
        (ERROR_MESSAGE, rejection.message.encode()),
        (ERROR_STAGE, rejection.stage.encode()),
        (SOURCE_TOPIC, (message.topic() or "").encode()),
        (SOURCE_PARTITION, _decimal(message.partition())),
        (SOURCE_OFFSET, _decimal(message.offset())),
    ]
    if http_status is not None:
        headers.append((HTTP_STATUS, str(http_status).encode()))
    if http_body is not None:
        headers.append((HTTP_BODY, _truncated(http_body)))
    return headers


def build(
    message: SourceMessage,
    rejection: Rejection,
    *,
    http_status: int | None = None,
    http_body: bytes | None = None,
) -> DeadLetter:
    """The dead-letter record for ``message``: its key, value and headers, plus ours."""
    original = message.headers() or []
    pairs = original.items() if isinstance(original, dict) else original
    kept = [(name, value) for name, value in pairs if not is_ours(name)]
    ours = dead_letter_headers(message, rejection, http_status=http_status, http_body=http_body)
    return DeadLetter(key=message.key(), value=message.value(), headers=[*kept, *ours])


def cuts(message: SourceMessage, whole: DeadLetter) -> list[DeadLetter]:
    """Smaller and smaller versions of the letter ``whole`` of ``message``, for a topic that
    refuses it as too large: first the value cut to ``CUT_VALUE_BYTES``, then the original headers
    dropped and the key cut as well, each only if it is longer than that: a letter whose parts
    are all shorter has nothing worth cutting, and a topic too small for it needs an operator.
    Each carries ``TRUNCATED`` and ``ORIGINAL_SIZE`` (docs/dlq.md#too-large)."""
    value, key = message.value() or b"", message.key() or b""
    ours = [(name, v) for name, v in whole.headers if is_ours(name)]
    theirs = sum(len(name) + len(v or b"") for name, v in whole.headers if not is_ours(name))
    letters: list[DeadLetter] = []
    cut: tuple[str, ...] = ()
    if len(value) > CUT_VALUE_BYTES:
        cut = ("value",)
        letters.append(_cut(whole, cut, len(value), headers=whole.headers))
    drop: tuple[str, ...] = ("key",) if len(key) > CUT_VALUE_BYTES else ()
    if theirs > CUT_VALUE_BYTES:
        drop += ("headers",)
    if drop:
        letters.append(_cut(whole, cut + drop, len(value), headers=ours))
    return letters


def _cut(
    whole: DeadLetter, cut: tuple[str, ...], size: int, *, headers: list[tuple[str, HeaderValue]]
) -> DeadLetter:
    key = _prefix(whole.key) if "key" in cut else whole.key
    value = _prefix(whole.value) if "value" in cut else whole.value
    marks = [(TRUNCATED, ",".join(cut).encode()), (ORIGINAL_SIZE, str(size).encode())]
    return DeadLetter(key=key, value=value, headers=[*headers, *marks], cut=cut)


def _prefix(data: bytes | None) -> bytes | None:
    return None if data is None else data[:CUT_VALUE_BYTES]


def _decimal(number: int | None) -> bytes:
    return b"" if number is None else str(number).encode()


def _truncated(body: bytes) -> bytes:
    """At most ``HTTP_BODY_MAX_BYTES`` of valid UTF-8; undecodable bytes become U+FFFD."""
    # final=False: a character cut by the slice is left out rather than turned into U+FFFD.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(body[:HTTP_BODY_MAX_BYTES], final=False).encode()
    # Each U+FFFD takes 3 bytes where the bad byte took 1, so cut again, at a character boundary.
    return text[:HTTP_BODY_MAX_BYTES].decode("utf-8", errors="ignore").encode()


class DeadLetterProducer:
    """Writes dead letters to one topic; ``send`` returns once Kafka has them (acks=all)."""

    topic: str
    """The dead-letter topic (``DCR_DLQ_TOPIC``)."""

    def __init__(self, config: Mapping[str, str | int | float | bool], topic: str) -> None:
        self.topic = topic
        self._producer = AckedProducer(config, name="dlq")

    def __repr__(self) -> str:
        # The config may hold SASL passwords: never show it.
        return f"DeadLetterProducer(topic={self.topic!r})"

    @property
    def alive(self) -> bool:
        """Whether its producer's poll thread runs (``AckedProducer.alive``)."""
        return self._producer.alive

    async def send(
        self,
        message: SourceMessage,
        rejection: Rejection,
        *,
        http_status: int | None = None,
        http_body: bytes | None = None,
    ) -> DeadLetter:
        """Write the dead letter of ``message``, cut (``cuts``) if Kafka refuses it whole as too
        large; return the letter written once Kafka acknowledged it.

        Raises ``DeadLetterError`` (naming the source record) if Kafka refused it or librdkafka
        gave up (``message.timeout.ms``, default 300 s); ``permanent`` when no retry can cure it
        (``classify``), a letter too large even cut included.
        """
        whole = build(message, rejection, http_status=http_status, http_body=http_body)
        letter, reason = whole, ""
        for letter in _whole_then_cut(message, whole):
            failure = await self._write(letter)
            if failure is None:
                return letter
            code, reason = failure
            verdict = classify(code)
            if verdict != "too_large":
                raise self._error(message, reason, permanent=verdict == "permanent")
        if letter.cut:
            why = f"{reason}, even cut ({','.join(letter.cut)}) to {CUT_VALUE_BYTES} bytes"
        else:
            why = f"{reason}, and nothing in it is longer than {CUT_VALUE_BYTES} bytes to cut"
        raise self._error(message, why, permanent=True)

    async def _write(self, letter: DeadLetter) -> tuple[int, str] | None:
        """None once Kafka acknowledged ``letter``, else librdkafka's error code and text."""
        try:
            error = await self._producer.send(
                self.topic, key=letter.key, value=letter.value, headers=letter.headers
            )
        except KafkaException as exc:
            # ``produce`` refused it locally, e.g. over the producer's ``message.max.bytes``.
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is None:
                return KafkaError._FAIL, str(exc)
        return None if error is None else (error.code(), error.str())

    def close(self, timeout_s: float = 2.0) -> None:
        """Flush up to ``timeout_s``, fail whatever is left (its ``send`` raises), stop polling.

        There is normally nothing to flush, since every ``send`` waited for its acknowledgement;
        the bound (what is left of the shutdown budget) is for a broker that stopped answering.
        """
        self._producer.close(timeout_s)

    def _error(
        self, message: SourceMessage, reason: str, *, permanent: bool = False
    ) -> DeadLetterError:
        return DeadLetterError(
            message.topic() or "",
            _number(message.partition()),
            _number(message.offset()),
            reason,
            permanent=permanent,
        )


def _whole_then_cut(message: SourceMessage, whole: DeadLetter) -> Iterator[DeadLetter]:
    """``whole``, then (only if asked for) its ``cuts``."""
    yield whole
    yield from cuts(message, whole)


def _number(value: int | None) -> int:
    return -1 if value is None else value
