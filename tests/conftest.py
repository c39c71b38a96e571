"""Fixtures shared by the whole suite: one real Kafka broker per session, and factories on it.

The broker is chosen in this order (SPEC §9): ``KAFKA_BOOTSTRAP_SERVERS`` if set; a testcontainers
``KafkaContainer`` if a Docker engine answers; else a local single-node KRaft broker started from
Apache Kafka's own jars (``stream.devkafka``). If none can be had, every integration test errors:
a missing broker fails the run, it never skips it. Unit tests never ask for the broker.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from stream.devkafka import LocalKafka
from stream.sandbox import Clock, Sandbox, SandboxConfig

_TESTCONTAINERS_IMAGE = "confluentinc/cp-kafka:8.0.0"
"""Confluent Platform 8.0 carries Apache Kafka 4.0, the oldest 4.x; used only where Docker runs."""


@dataclass(frozen=True, kw_only=True)
class Broker:
    bootstrap_servers: str
    kind: str
    """``external``, ``testcontainers`` or ``local jars``."""
    version: str


_started: list[Broker] = []


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:  # no client library, no socket, no engine: all mean "no Docker"
        return False
    return True


@pytest.fixture(scope="session")
def kafka() -> Iterator[Broker]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        broker = Broker(bootstrap_servers=external, kind="external", version="unknown")
        _started.append(broker)
        yield broker
        return
    if _docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer(_TESTCONTAINERS_IMAGE).with_kraft() as container:
            broker = Broker(
                bootstrap_servers=container.get_bootstrap_server(),
                kind="testcontainers",
                version=_TESTCONTAINERS_IMAGE,
            )
            _started.append(broker)
            yield broker
        return
    with LocalKafka() as local:
        broker = Broker(
            bootstrap_servers=local.bootstrap_servers, kind="local jars", version=local.version
        )
        _started.append(broker)
        yield broker


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for broker in _started:
        terminalreporter.write_line(
            f"Kafka broker: {broker.kind}, Apache Kafka {broker.version} "
            f"at {broker.bootstrap_servers}"
        )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def admin(kafka: Broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": kafka.bootstrap_servers})


@pytest.fixture
def topic_factory(admin: AdminClient) -> Iterator[Callable[..., str]]:
    """``topic_factory(partitions=1, name=None)``: a fresh topic, created before it returns."""
    created: list[str] = []

    def create(partitions: int = 1, name: str | None = None) -> str:
        topic = name or unique("topic")
        futures = admin.create_topics([NewTopic(topic, num_partitions=partitions)])
        futures[topic].result(timeout=30)
        created.append(topic)
        return topic

    yield create
    if created:
        for future in admin.delete_topics(created).values():
            future.result(timeout=30)


@pytest.fixture
def group_factory() -> Callable[[], str]:
    return lambda: unique("group")


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


# -- the sandbox -------------------------------------------------------------------------------

SandboxFactory = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
async def sandbox_factory() -> AsyncIterator[SandboxFactory]:
    """``await sandbox_factory(config=None, clock=time)``: a started sandbox on a free loopback
    port (``.url``), stopped at teardown."""
    started: list[Sandbox] = []

    async def start(config: SandboxConfig | None = None, *, clock: Clock | None = None) -> Sandbox:
        sandbox = Sandbox(config) if clock is None else Sandbox(config, clock=clock)
        await sandbox.start()
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        await sandbox.stop()


@pytest.fixture
async def sandbox(sandbox_factory: SandboxFactory) -> Sandbox:
    """A started sandbox with the default configuration: any key mints a token, any label goes."""
    return await sandbox_factory()
