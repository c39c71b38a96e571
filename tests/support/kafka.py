"""The real Kafka broker, and what tests and benchmarks do with it: topics, clients, offsets, reads.

The broker is chosen in this order (docs/testing.md): ``KAFKA_BOOTSTRAP_SERVERS`` if set; a
testcontainers ``KafkaContainer`` if a Docker engine answers; else a local single-node KRaft broker
started from Apache Kafka's own jars (``stream.devkafka``). The suite starts one per session (the
``kafka`` fixture); if none can be had, every integration test errors: a missing broker fails the
run, it never skips it. Unit tests never ask for the broker.

The factory fixtures (``topic_factory``, ``group_factory``, ``producer_factory``,
``consumer_factory``) give each test fresh names and clean up after it. The plain functions take a
bootstrap address, so that they serve the session broker, a broker a test starts for itself, and
the benchmarks alike.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Self

import pytest
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from stream.devkafka import LocalKafka
from tests.support.summary import note
from tests.support.waiting import wait_until

__all__ = [
    "Broker",
    "Offsets",
    "admin",
    "consume",
    "consumer_factory",
    "create_topic",
    "delete_topics",
    "group_factory",
    "header_texts",
    "headers",
    "kafka",
    "produce",
    "producer_factory",
    "read_topic",
    "start_broker",
    "topic_factory",
    "unique",
    "wait_committed",
]

_TESTCONTAINERS_IMAGE = "confluentinc/cp-kafka:8.0.0"
"""Confluent Platform 8.0 carries Apache Kafka 4.0, the oldest 4.x; used only where Docker runs."""

_QUIET = {"log_level": 3}
"""librdkafka errors only, for the clients made here: a fresh broker's "coordinator load in
progress" warnings are noise in a test's output and in a benchmark's."""

READ_TIMEOUT_S = 60.0
"""How long reading a topic back may take; the topics tests read hold thousands of records."""


@dataclass(frozen=True, kw_only=True)
class Broker:
    bootstrap_servers: str
    kind: str
    """``external``, ``testcontainers`` or ``local jars``."""
    version: str


def _docker_answers() -> bool:
    # When the engine does not answer, the docker library leaves the socket of its failed
    # connection to the garbage collector, which warns about it (an error under the suite's
    # filterwarnings): collect it here, with that one warning silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker

            with contextlib.closing(docker.from_env(timeout=3)) as client:
                return bool(client.ping())
        except Exception:  # no client library, no socket, no engine: all mean "no Docker"
            return False
        finally:
            gc.collect()


@contextlib.contextmanager
def start_broker(*, docker: bool = True, heap_mb: int | None = None) -> Iterator[Broker]:
    """The broker to use, started for the ``with`` block if it is not external. ``docker=False``
    skips testcontainers (the benchmarks measure against the local jars); ``heap_mb`` sizes the
    local broker's JVM."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield Broker(bootstrap_servers=external, kind="external", version="unknown")
        return
    if docker and _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer(_TESTCONTAINERS_IMAGE).with_kraft() as container:
            yield Broker(
                bootstrap_servers=container.get_bootstrap_server(),
                kind="testcontainers",
                version=_TESTCONTAINERS_IMAGE,
            )
        return
    local = LocalKafka() if heap_mb is None else LocalKafka(heap_mb=heap_mb)
    with local:
        yield Broker(
            bootstrap_servers=local.bootstrap_servers, kind="local jars", version=local.version
        )


@pytest.fixture(scope="session")
def kafka() -> Iterator[Broker]:
    """The broker of this pytest session (of each xdist worker: a broker per worker)."""
    with start_broker() as broker:
        note(
            "brokers",
            f"Kafka broker: {broker.kind}, Apache Kafka {broker.version} "
            f"at {broker.bootstrap_servers}",
        )
        yield broker


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- topics ------------------------------------------------------------------------------------


def create_topic(
    bootstrap_servers: str,
    partitions: int = 1,
    *,
    name: str | None = None,
    config: dict[str, str] | None = None,
) -> str:
    """A fresh topic (``name``, else a unique one), created before it returns."""
    topic = name or unique("topic")
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **_QUIET})
    futures = admin.create_topics([NewTopic(topic, partitions, config=config or {})])
    futures[topic].result(timeout=30)
    return topic


def delete_topics(bootstrap_servers: str, topics: Sequence[str]) -> None:
    if topics:
        admin = AdminClient({"bootstrap.servers": bootstrap_servers, **_QUIET})
        for future in admin.delete_topics(list(topics)).values():
            future.result(timeout=30)


@pytest.fixture
def admin(kafka: Broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka.bootstrap_servers, **_QUIET})


@pytest.fixture
def topic_factory(kafka: Broker) -> Iterator[Callable[..., str]]:
    """``topic_factory(partitions=1, name=None)``: a fresh topic, deleted at teardown."""
    created: list[str] = []

    def create(partitions: int = 1, name: str | None = None) -> str:
        created.append(create_topic(kafka.bootstrap_servers, partitions, name=name))
        return created[-1]

    yield create
    delete_topics(kafka.bootstrap_servers, created)


@pytest.fixture
def group_factory() -> Callable[[], str]:
    return lambda: unique("group")


# -- clients -----------------------------------------------------------------------------------


@pytest.fixture
def producer_factory(kafka: Broker) -> Iterator[Callable[..., Producer]]:
    producers: list[Producer] = []

    def create(**config: Any) -> Producer:
        producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, **config})
        producers.append(producer)
        return producer

    yield create
    for producer in producers:
        producer.flush(10)


@pytest.fixture
def consumer_factory(kafka: Broker) -> Iterator[Callable[..., Consumer]]:
    """``consumer_factory(group_id, **config)``: earliest offsets, manual commits; closed after."""
    consumers: list[Consumer] = []

    def create(group_id: str, **config: Any) -> Consumer:
        consumer = Consumer(
            {
                "bootstrap.servers": kafka.bootstrap_servers,
                "group.id": group_id,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                **config,
            }
        )
        consumers.append(consumer)
        return consumer

    yield create
    for consumer in consumers:
        consumer.close()


def produce(
    producer: Producer, topic: str, value: bytes | None, key: bytes | None, **kw: Any
) -> None:
    """``producer.produce``, letting librdkafka send while its local queue is full."""
    while True:
        try:
            producer.produce(topic, value, key, **kw)
            return
        except BufferError:
            producer.poll(0.1)


def consume(consumer: Consumer, count: int, *, timeout_s: float = READ_TIMEOUT_S) -> list[Message]:
    """The next ``count`` messages of an assigned or subscribed ``consumer``; none may be an
    error, and all must come before the deadline."""
    messages: list[Message] = []

    def received() -> bool:
        if len(messages) < count:
            for message in consumer.consume(count - len(messages), timeout=0.5):
                assert message.error() is None, message.error()
                messages.append(message)
        return len(messages) == count

    wait_until(received, timeout_s=timeout_s, interval_s=0, what=f"{count} messages")
    return messages


def read_topic(
    bootstrap_servers: str, topic: str, *, at_least: int = 0, timeout_s: float = READ_TIMEOUT_S
) -> list[Message]:
    """Every record of ``topic``, from the beginning of each partition to its end as of when there
    are at least ``at_least`` (waiting for them while they are being written). A topic that does
    not exist holds none. Joins no group."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": unique("reader"),
            "enable.auto.commit": False,
            **_QUIET,
        }
    )
    try:
        bounds: dict[int, tuple[int, int]] = {}

        def enough() -> bool:
            bounds.clear()
            metadata = consumer.list_topics(topic, timeout=30).topics[topic]
            if metadata.error is None:
                for partition in metadata.partitions:
                    tp = TopicPartition(topic, partition)
                    bounds[partition] = consumer.get_watermark_offsets(tp, timeout=30)
            return sum(high - low for low, high in bounds.values()) >= at_least

        started = time.monotonic()
        wait_until(enough, timeout_s=timeout_s, interval_s=0.5, what=f"{at_least} in {topic}")
        if at_least:
            # Records beyond those expected would be duplicates: give them a moment to show.
            time.sleep(1.0)
            enough()
        filled = {p: (low, high) for p, (low, high) in bounds.items() if high > low}
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in filled.items()])
        left_s = max(1.0, timeout_s - (time.monotonic() - started))
        return consume(consumer, sum(high - low for low, high in filled.values()), timeout_s=left_s)
    finally:
        consumer.close()


def headers(message: Message) -> list[tuple[str, str | bytes | None]]:
    """A consumed message's headers, in order. (confluent-kafka's type allows a dict too; a
    consumed message carries a list.)"""
    found = message.headers() or []
    assert isinstance(found, list)
    return found


def header_texts(message: Message) -> dict[str, str]:
    """A consumed message's headers as text, the last value of each name."""
    return {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in headers(message)}


# -- offsets -----------------------------------------------------------------------------------


class Offsets:
    """A group's committed offsets and a topic's end offsets, per partition. Never joins the group;
    close it (or use it as a context manager)."""

    def __init__(self, bootstrap_servers: str, group: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap_servers, "group.id": group, **_QUIET}
        )
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]

    def committed(self, timeout_s: float = 30) -> list[int]:
        """Negative where nothing is committed. Retries while the coordinator moves or loads (a
        fresh broker, a restarted one)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return [tp.offset for tp in self._consumer.committed(self._tps, timeout=10)]
            except KafkaException:  # NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS, …
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def ends(self, timeout_s: float = 10) -> list[int]:
        return [self._consumer.get_watermark_offsets(tp, timeout=timeout_s)[1] for tp in self._tps]

    def all_committed(self) -> bool:
        """A condition to wait for: the group committed every partition to its end."""
        try:
            return self.committed() == self.ends()
        except KafkaException:  # the broker is away: not yet
            return False

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def wait_committed(
    bootstrap_servers: str, group: str, topic: str, partitions: int, *, timeout_s: float
) -> None:
    """Wait until ``group`` committed every partition of ``topic`` to its end offset."""
    with Offsets(bootstrap_servers, group, topic, partitions) as offsets:
        wait_until(offsets.all_committed, timeout_s=timeout_s, what=f"{group}'s commits")
