"""Dead letters without a broker: docs/dlq.md's headers, the body cut, and failures that surface.

The round trip through a real broker is in ``tests/integration/test_dlq.py``.
"""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import Message

from stream.dlq import HTTP_BODY_MAX_BYTES, DeadLetterProducer, build, dead_letter_headers
from stream.errors import DcrStreamError, DeadLetterError
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
