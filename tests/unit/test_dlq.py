"""Dead letters without a broker: docs/dlq.md's headers, the body cut, letters cut to fit, and
failures that surface, sorted into what a retry cures and what it does not.

The round trip through a real broker is in ``tests/integration/test_dlq.py``.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from confluent_kafka import KafkaError, Message

from stream.dlq import (
    CUT_VALUE_BYTES,
    HTTP_BODY_MAX_BYTES,
    DeadLetter,
    DeadLetterProducer,
    build,
    classify,
    cuts,
    dead_letter_headers,
    is_ours,
)
from stream.dlq import (
    HEADERS as OURS,
)
from stream.errors import DcrStreamError, DeadLetterError
from stream.producer import Headers
from stream.validation import Rejection

INVALID_PHONE = Rejection(
    code="invalid_phone", field="caller", message="caller must be 8-15 digits", stage="validate"
)
NOT_JSON = Rejection(code="not_json", field=None, message="not JSON", stage="decode")
REFUSED = Rejection(code="api_rejected", field=None, message="the API answered 400", stage="api")
HEADERS: list[tuple[str, str | bytes | None]] = [
    ("trace-id", b"abc"),
    ("dup", b"1"),
    ("dup", b"2"),
    ("empty", None),
]
NOWHERE: dict[str, str | int | float | bool] = {"bootstrap.servers": "127.0.0.1:1", "log_level": 0}
"""No broker listens on port 1: writes can only fail."""


def message(
    *,
    key: bytes | None = b"order-42",
    value: bytes | None = b'{"caller": "x"}',
    headers: list[tuple[str, str | bytes | None]] | None = HEADERS,
) -> Message:
    copied = None if headers is None else list(headers)  # each message its own list
    return Message(
        topic="call-intents", partition=3, offset=1234567, key=key, value=value, headers=copied
    )


def test_the_headers_of_a_rule_broken() -> None:
    assert dead_letter_headers(message(), INVALID_PHONE) == [
        ("dcr.error.code", b"invalid_phone"),
        ("dcr.error.field", b"caller"),
        ("dcr.error.message", b"caller must be 8-15 digits"),
        ("dcr.error.stage", b"validate"),
        ("dcr.source.topic", b"call-intents"),
        ("dcr.source.partition", b"3"),
        ("dcr.source.offset", b"1234567"),
    ]


def test_no_field_is_an_empty_header() -> None:
    assert ("dcr.error.field", b"") in dead_letter_headers(message(), NOT_JSON)


def test_an_api_rejection_adds_status_and_body() -> None:
    headers = dead_letter_headers(
        message(), REFUSED, http_status=422, http_body=b'{"slug": "bad_label"}'
    )
    assert headers[-2:] == [
        ("dcr.http.status", b"422"),
        ("dcr.http.body", b'{"slug": "bad_label"}'),
    ]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"x" * HTTP_BODY_MAX_BYTES, b"x" * HTTP_BODY_MAX_BYTES),
        (b"x" * 5000, b"x" * HTTP_BODY_MAX_BYTES),
        # "é" is 2 bytes: the one cut in half by the limit is left out, not turned into U+FFFD.
        (b"x" + "é".encode() * 600, b"x" + "é".encode() * 511),
        (b"ok \xff ok", "ok \ufffd ok".encode()),
        # every bad byte becomes 3: cut again, at a character boundary.
        (b"\xff" * HTTP_BODY_MAX_BYTES, "\ufffd".encode() * 341),
        (b"", b""),
    ],
    ids=["exactly the limit", "longer", "multi-byte cut", "bad byte", "all bad", "empty"],
)
def test_the_body_is_cut_to_valid_utf8(body: bytes, expected: bytes) -> None:
    headers = dead_letter_headers(message(), REFUSED, http_status=500, http_body=body)
    name, value = headers[-1]
    assert name == "dcr.http.body"
    assert value == expected
    assert len(value) <= HTTP_BODY_MAX_BYTES
    value.decode("utf-8")


def test_key_value_and_headers_are_kept_in_order() -> None:
    letter = build(message(), INVALID_PHONE)
    assert (letter.key, letter.value) == (b"order-42", b'{"caller": "x"}')
    assert letter.headers[:4] == [
        ("trace-id", b"abc"),
        ("dup", b"1"),
        ("dup", b"2"),
        ("empty", None),
    ]
    assert letter.headers[4:] == dead_letter_headers(message(), INVALID_PHONE)


def test_a_tombstone_stays_a_message_without_value_or_key() -> None:
    letter = build(message(key=None, value=None, headers=None), NOT_JSON)
    assert (letter.key, letter.value) == (None, None)
    assert letter.headers == dead_letter_headers(message(), NOT_JSON)


def test_headers_of_an_earlier_failure_are_replaced() -> None:
    replayed = message(
        headers=[
            ("trace-id", b"abc"),
            ("dcr.error.code", b"api_rejected"),
            ("dcr.http.status", b"400"),
            ("dcr.http.body", b"old"),
        ]
    )
    letter = build(replayed, INVALID_PHONE)
    assert letter.headers == [("trace-id", b"abc"), *dead_letter_headers(replayed, INVALID_PHONE)]


def test_dead_letter_error_is_a_dcr_stream_error_with_the_source() -> None:
    error = DeadLetterError("call-intents", 3, 1234567, "Broker: Message too large")
    assert isinstance(error, DcrStreamError)
    assert (error.topic, error.partition, error.offset) == ("call-intents", 3, 1234567)
    assert "call-intents[3]@1234567" in str(error)


def test_the_config_never_shows() -> None:
    producer = DeadLetterProducer({**NOWHERE, "sasl.password": "hunter2"}, "call-intents.dlq")
    try:
        assert repr(producer) == "DeadLetterProducer(topic='call-intents.dlq')"
    finally:
        producer.close(timeout_s=0)


async def test_a_write_kafka_never_acknowledges_raises() -> None:
    producer = DeadLetterProducer({**NOWHERE, "message.timeout.ms": 100}, "call-intents.dlq")
    try:
        with pytest.raises(DeadLetterError) as raised:
            await producer.send(message(), INVALID_PHONE)
    finally:
        producer.close(timeout_s=0)
    assert (raised.value.topic, raised.value.partition, raised.value.offset) == (
        "call-intents",
        3,
        1234567,
    )
    assert "timed out" in raised.value.reason


async def test_close_fails_the_writes_still_waiting() -> None:
    producer = DeadLetterProducer({**NOWHERE, "message.timeout.ms": 600_000}, "call-intents.dlq")
    send = asyncio.create_task(producer.send(message(), INVALID_PHONE))
    await asyncio.sleep(0)  # let it produce and wait
    producer.close(timeout_s=0)
    with pytest.raises(DeadLetterError, match="urge"):
        await send


HUGE = os.urandom(1_040_000)
"""A value just under the broker's 1 MiB limit, rejected by validation (message_too_large)."""
TOO_LARGE = Rejection(
    code="message_too_large", field=None, message="the value is too large", stage="validate"
)


def marks(letter: DeadLetter) -> tuple[bytes | str | None, bytes | str | None]:
    found = dict(letter.headers)
    return found.get("dcr.error.truncated"), found.get("dcr.original.size")


LONG_HEADERS: list[tuple[str, str | bytes | None]] = [
    ("trace", b"t" * CUT_VALUE_BYTES),
    ("id", b"1"),
]


def test_a_large_value_is_cut_first_then_long_original_headers_go() -> None:
    huge = message(value=HUGE, headers=LONG_HEADERS)
    whole = build(huge, TOO_LARGE)
    first, last = cuts(huge, whole)
    assert first.value == HUGE[:CUT_VALUE_BYTES]
    assert first.key == b"order-42"
    assert first.headers[: len(LONG_HEADERS)] == LONG_HEADERS
    assert marks(first) == (b"value", b"1040000")
    assert first.cut == ("value",)
    assert last.value == HUGE[:CUT_VALUE_BYTES]
    assert last.headers[:7] == dead_letter_headers(huge, TOO_LARGE)
    assert all(is_ours(name) for name, _ in last.headers)
    assert marks(last) == (b"value,headers", b"1040000")


def test_a_long_key_is_cut_with_the_headers() -> None:
    keyed = message(key=b"k" * (CUT_VALUE_BYTES + 1), headers=None)
    (letter,) = cuts(keyed, build(keyed, TOO_LARGE))
    assert letter.key == b"k" * CUT_VALUE_BYTES
    assert letter.value == b'{"caller": "x"}'
    assert marks(letter) == (b"key", b"15")


def test_short_parts_are_not_cut() -> None:
    small = message()
    assert cuts(small, build(small, INVALID_PHONE)) == []
    assert build(small, INVALID_PHONE).cut == ()
    (letter,) = cuts(message(value=HUGE), build(message(value=HUGE), TOO_LARGE))
    assert letter.headers[: len(HEADERS)] == HEADERS


def test_the_new_headers_are_ours() -> None:
    assert OURS[-2:] == ("dcr.error.truncated", "dcr.original.size")
    assert all(is_ours(name) for name in OURS)


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, "too_large"),
        (KafkaError.RECORD_LIST_TOO_LARGE, "too_large"),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "permanent"),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, "permanent"),
        (KafkaError._UNKNOWN_TOPIC, "permanent"),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, "permanent"),
        (KafkaError._MSG_TIMED_OUT, "transient"),
        (KafkaError.NOT_LEADER_FOR_PARTITION, "transient"),
        (KafkaError._TRANSPORT, "transient"),
        (KafkaError.NOT_ENOUGH_REPLICAS, "transient"),
    ],
)
def test_refusals_are_sorted_by_what_cures_them(code: int, verdict: str) -> None:
    assert classify(code) == verdict


class Topic:
    """Stands in for the acknowledged producer: refuses a letter over ``max_bytes`` as a broker
    does (a delivery error), or every letter with ``refuse``; records what it was sent."""

    def __init__(self, max_bytes: int, refuse: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.refuse = refuse
        self.sent: list[int] = []

    async def send(
        self, topic: str, *, key: bytes | None, value: bytes | None, headers: Headers | None
    ) -> KafkaError | None:
        size = len(key or b"") + len(value or b"")
        size += sum(len(n) + len(v or b"") for n, v in headers or [])
        self.sent.append(size)
        if self.refuse is not None:
            return KafkaError(self.refuse)
        return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if size > self.max_bytes else None


def producer_for(topic: Topic) -> DeadLetterProducer:
    producer = DeadLetterProducer(NOWHERE, "call-intents.dlq")
    producer.close(timeout_s=0)
    producer._producer = topic  # type: ignore[assignment]
    return producer


async def test_a_letter_too_large_whole_is_written_cut() -> None:
    topic = Topic(max_bytes=1_000_000)
    letter = await producer_for(topic).send(message(value=HUGE), TOO_LARGE)
    assert letter.cut == ("value",)
    assert len(topic.sent) == 2
    assert topic.sent[0] > 1_000_000 >= topic.sent[1]


async def test_huge_original_headers_are_dropped() -> None:
    topic = Topic(max_bytes=16_384)
    letter = await producer_for(topic).send(message(value=HUGE, headers=LONG_HEADERS), TOO_LARGE)
    assert letter.cut == ("value", "headers")
    assert len(topic.sent) == 3


async def test_too_large_even_cut_is_permanent() -> None:
    topic = Topic(max_bytes=200)
    with pytest.raises(DeadLetterError) as raised:
        await producer_for(topic).send(message(value=HUGE), TOO_LARGE)
    assert raised.value.permanent
    assert "Message size too large" in raised.value.reason
    assert "even cut (value) to 8192 bytes" in raised.value.reason
    assert len(topic.sent) == 2


@pytest.mark.parametrize(
    ("code", "permanent"),
    [(KafkaError.TOPIC_AUTHORIZATION_FAILED, True), (KafkaError._MSG_TIMED_OUT, False)],
)
async def test_a_refusal_other_than_size_is_not_cut(code: int, permanent: bool) -> None:
    topic = Topic(max_bytes=2_000_000, refuse=code)
    with pytest.raises(DeadLetterError) as raised:
        await producer_for(topic).send(message(value=HUGE), TOO_LARGE)
    assert raised.value.permanent is permanent
    assert len(topic.sent) == 1


async def test_the_producers_own_limit_is_met_by_a_cut_letter() -> None:
    # ``produce`` itself refuses a letter over ``message.max.bytes``; the cut one is queued (and,
    # with no broker, times out: a transient failure).
    producer = DeadLetterProducer(
        {**NOWHERE, "message.max.bytes": 100_000, "message.timeout.ms": 100}, "call-intents.dlq"
    )
    try:
        with pytest.raises(DeadLetterError) as raised:
            await producer.send(message(value=HUGE), TOO_LARGE)
    finally:
        producer.close(timeout_s=0)
    assert "timed out" in raised.value.reason
    assert not raised.value.permanent


async def test_the_producers_own_limit_below_any_letter_is_permanent() -> None:
    producer = DeadLetterProducer({**NOWHERE, "message.max.bytes": 1000}, "call-intents.dlq")
    try:
        with pytest.raises(DeadLetterError) as raised:
            await producer.send(message(value=HUGE), TOO_LARGE)
    finally:
        producer.close(timeout_s=0)
    assert raised.value.permanent
    assert "too large" in raised.value.reason
