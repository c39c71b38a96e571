"""The session broker is a real Apache Kafka 4.x: produce through it and consume back."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer

from tests.conftest import Broker

pytestmark = pytest.mark.integration


def test_produce_and_consume_round_trip(
    kafka: Broker,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
    producer_factory: Callable[..., Producer],
    consumer_factory: Callable[..., Consumer],
) -> None:
    topic = topic_factory(partitions=3)
    producer = producer_factory()
    sent = {f"key-{i}".encode(): f"value-{i}".encode() for i in range(100)}
    for key, value in sent.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0

    consumer = consumer_factory(group_factory())
    consumer.subscribe([topic])
    received: dict[bytes, bytes] = {}
    partitions: set[int] = set()
    deadline = time.monotonic() + 60
    while len(received) < len(sent) and time.monotonic() < deadline:
        for message in consumer.consume(100, timeout=0.5):
            assert message.error() is None, message.error()
            received[message.key()] = message.value()
            partitions.add(message.partition())

    assert received == sent
    assert partitions == {0, 1, 2}
    if kafka.kind == "local jars":
        assert kafka.version.startswith("4."), kafka.version
    print(f"broker: {kafka.kind}, Apache Kafka {kafka.version}")
