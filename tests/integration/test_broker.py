"""The session broker is a real Apache Kafka 4.x: produce through it and consume back."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer

from tests.support.kafka import Broker, consume

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
    messages = consume(consumer, len(sent))  # none of them an error
    received = {message.key(): message.value() for message in messages}
    partitions = {message.partition() for message in messages}

    assert received == sent
    assert partitions == {0, 1, 2}
    if kafka.kind == "local jars":
        assert kafka.version.startswith("4."), kafka.version
    print(f"broker: {kafka.kind}, Apache Kafka {kafka.version}")
