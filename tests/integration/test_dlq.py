"""Dead letters through a real broker (docs/dlq.md): invalid events are consumed, validated, written
to the dead-letter topic by ``DeadLetterProducer``, and read back with every header in place."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Message, Producer

from stream.dlq import DeadLetterProducer
from stream.errors import DeadLetterError
from stream.validation import Rejection, Rules, validate
from tests.support.kafka import Broker, consume, headers

pytestmark = pytest.mark.integration

NOW = 4_102_444_800_000
ACCOUNT = "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11"
LABEL = "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"


def event(**changes: object) -> bytes:
    fields = {
        "client_account_id": ACCOUNT,
        "caller": "+91 80 4000 1000",
        "receiver": "+91 98765 43210",
        "label_id": LABEL,
        "starts_at": NOW,
        "ends_at": NOW + 3_600_000,
    }
    return json.dumps({**fields, **changes}).encode()


INVALID: list[tuple[bytes | None, bytes | None, str, str]] = [
    (b"k-tombstone", None, "empty_message", ""),
    (b"k-latin1", event(label_name="caf\u00e9").replace(b"\\u00e9", b"\xe9"), "not_utf8", ""),
    (None, b"{oops", "not_json", ""),
    (b"k-array", b"[]", "not_an_object", ""),
    (b"k-phone", event(caller="123"), "invalid_phone", "caller"),
    (b"k-seconds", event(starts_at=NOW // 1000), "timestamp_seconds", "starts_at"),
    (
        b"k-expired",
        event(starts_at=1_704_067_200_000, ends_at=1_704_067_200_000),
        "expired",
        "ends_at",
    ),
]
"""(key, value, code, field) of each event produced; every one is rejected."""

HEADERS: list[tuple[str, str | bytes | None]] = [("trace-id", b"t-1"), ("dup", b"1"), ("dup", b"2")]


def header(message: Message, name: str) -> str | bytes | None:
    values = [v for k, v in headers(message) if k == name]
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


async def test_rejected_events_reach_the_dead_letter_topic_with_every_header(
    kafka: Broker,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
    producer_factory: Callable[..., Producer],
    consumer_factory: Callable[..., Consumer],
) -> None:
    source, dead = topic_factory(partitions=2), topic_factory()
    producer = producer_factory()
    for i, (key, value, _, _) in enumerate(INVALID):
        producer.produce(source, key=key, value=value, headers=HEADERS, partition=i % 2)
    assert producer.flush(30) == 0
    consumer = consumer_factory(group_factory())
    consumer.subscribe([source])
    originals = consume(consumer, len(INVALID))

    dlq = DeadLetterProducer({"bootstrap.servers": kafka.bootstrap_servers}, dead)
    try:
        for original in originals:
            rejection = validate(original.value(), rules=Rules(), now_ms=NOW)
            assert isinstance(rejection, Rejection)
            await dlq.send(original, rejection)
    finally:
        dlq.close()

    reader = consumer_factory(group_factory())
    reader.subscribe([dead])
    letters = {
        (header(m, "dcr.source.partition"), header(m, "dcr.source.offset")): m
        for m in consume(reader, len(INVALID))
    }
    expected = {(m.key(), m.value()): m for m in originals}
    for key, value, code, field in INVALID:
        original = expected[(key, value)]
        letter = letters[(str(original.partition()).encode(), str(original.offset()).encode())]
        assert (letter.key(), letter.value()) == (key, value)
        assert headers(letter)[: len(HEADERS)] == HEADERS
        assert header(letter, "dcr.error.code") == code.encode()
        assert header(letter, "dcr.error.field") == field.encode()
        assert header(letter, "dcr.error.message")
        stage = b"decode" if field == "" else b"validate"
        assert header(letter, "dcr.error.stage") == stage
        assert header(letter, "dcr.source.topic") == source.encode()
        assert header(letter, "dcr.http.status") is None
        assert header(letter, "dcr.http.body") is None
        assert len(headers(letter)) == len(HEADERS) + 7


async def test_an_api_rejection_carries_status_and_cut_body(
    kafka: Broker,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
    producer_factory: Callable[..., Producer],
    consumer_factory: Callable[..., Consumer],
) -> None:
    source, dead = topic_factory(), topic_factory()
    producer = producer_factory()
    producer.produce(source, key=b"k-api", value=event(), headers=HEADERS)
    assert producer.flush(30) == 0
    consumer = consumer_factory(group_factory())
    consumer.subscribe([source])
    (original,) = consume(consumer, 1)
    text = {"field": "label_id", "message": "unknown label: " + "é" * 2000}
    body = json.dumps(text, ensure_ascii=False).encode()
    rejection = Rejection(
        code="api_rejected", field=None, message="the API answered 422", stage="api"
    )

    dlq = DeadLetterProducer({"bootstrap.servers": kafka.bootstrap_servers}, dead)
    try:
        await dlq.send(original, rejection, http_status=422, http_body=body)
    finally:
        dlq.close()

    reader = consumer_factory(group_factory())
    reader.subscribe([dead])
    (letter,) = consume(reader, 1)
    assert (letter.key(), letter.value()) == (b"k-api", event())
    assert headers(letter)[: len(HEADERS)] == HEADERS
    assert header(letter, "dcr.error.code") == b"api_rejected"
    assert header(letter, "dcr.error.field") == b""
    assert header(letter, "dcr.error.stage") == b"api"
    assert header(letter, "dcr.source.topic") == source.encode()
    assert header(letter, "dcr.source.partition") == b"0"
    assert header(letter, "dcr.source.offset") == b"0"
    assert header(letter, "dcr.http.status") == b"422"
    cut = header(letter, "dcr.http.body")
    assert isinstance(cut, bytes)
    assert len(cut) == 1023  # the "é" at bytes 1023-1024 is left out, not cut in half
    assert body.startswith(cut)
    cut.decode("utf-8")


async def test_a_missing_topic_is_a_permanent_refusal(
    kafka: Broker,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
    producer_factory: Callable[..., Producer],
    consumer_factory: Callable[..., Consumer],
) -> None:
    source = topic_factory()
    producer = producer_factory()
    producer.produce(source, key=b"k-phone", value=event(caller="123"))
    assert producer.flush(30) == 0
    consumer = consumer_factory(group_factory())
    consumer.subscribe([source])
    (original,) = consume(consumer, 1)
    rejection = validate(original.value(), rules=Rules(), now_ms=NOW)
    assert isinstance(rejection, Rejection)

    # A cluster that creates no topic on demand (the producer may not ask for it here): librdkafka
    # fails the write once the topic is still unknown after the propagation time.
    config: dict[str, str | int | float | bool] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "allow.auto.create.topics": False,
        "topic.metadata.propagation.max.ms": 1000,
    }
    dlq = DeadLetterProducer(config, f"{source}.missing")
    try:
        with pytest.raises(DeadLetterError) as raised:
            await dlq.send(original, rejection)
    finally:
        dlq.close()
    assert raised.value.permanent, raised.value.reason
    assert "Unknown topic" in raised.value.reason, raised.value.reason
