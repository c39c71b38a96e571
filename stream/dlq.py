"""The dead-letter topic (docs/dlq.md): the original message, unchanged, plus why it failed.

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

Nothing else is added: no configuration, no token, no request. Every header named ``dcr.*`` is
ours (``is_ours``): an original that already carries some (a replayed record that failed again) has
them replaced, so each appears once and always describes the latest failure, and ``replay`` strips
them all before a record goes back to an input topic.

:class:`DeadLetterProducer` returns from ``send`` only once Kafka acknowledged the write (acks=all,
idempotent), because the consumer commits past a dead-lettered record on the strength of it
(docs/design.md#at-least-once).
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import KafkaException

from stream.errors import DeadLetterError
from stream.producer import AckedProducer
from stream.validation import Rejection

__all__ = [
    "ERROR_CODE",
    "ERROR_FIELD",
    "ERROR_MESSAGE",
    "ERROR_STAGE",
    "HEADERS",
    "HTTP_BODY",
    "HTTP_BODY_MAX_BYTES",
    "HTTP_STATUS",
    "PREFIX",
    "SOURCE_OFFSET",
    "SOURCE_PARTITION",
    "SOURCE_TOPIC",
    "DeadLetter",
    "DeadLetterProducer",
    "SourceMessage",
    "build",
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
)
"""Every header this module writes, in the order it writes them."""

HTTP_BODY_MAX_BYTES = 1024

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
    ) -> None:
        """Write the dead letter of ``message``; return once Kafka acknowledged it.

        Raises ``DeadLetterError`` (naming the source record) if Kafka refused it or librdkafka
        gave up (``message.timeout.ms``, default 300 s).
        """
        letter = build(message, rejection, http_status=http_status, http_body=http_body)
        try:
            error = await self._producer.send(
                self.topic, key=letter.key, value=letter.value, headers=letter.headers
            )
        except KafkaException as exc:
            raise self._error(message, str(exc)) from None
        if error is not None:
            raise self._error(message, error.str())

    def close(self, timeout_s: float = 2.0) -> None:
        """Flush up to ``timeout_s``, fail whatever is left (its ``send`` raises), stop polling.

        There is normally nothing to flush, since every ``send`` waited for its acknowledgement;
        the bound (what is left of the shutdown budget) is for a broker that stopped answering.
        """
        self._producer.close(timeout_s)

    def _error(self, message: SourceMessage, reason: str) -> DeadLetterError:
        return DeadLetterError(
            message.topic() or "", _number(message.partition()), _number(message.offset()), reason
        )


def _number(value: int | None) -> int:
    return -1 if value is None else value
