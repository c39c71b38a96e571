"""Liveness covers every thread the service runs (docs/operations.md#health): ``/healthz`` names
the one that ended, and each thread's owner says whether it lives, without a broker."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import KafkaError, KafkaException

from stream.app import Pipeline
from stream.http import Health, http_app
from stream.leases import KafkaLeases
from stream.metrics import Metrics
from stream.originals import OriginalReader
from stream.producer import AckedProducer
from tests.support.waiting import wait_until, wait_until_async

NOWHERE = {"bootstrap.servers": "127.0.0.1:1"}
"""A broker that is never there: nothing here needs one to answer."""


async def healthz(threads: dict[str, bool]) -> tuple[int, str]:
    health = Health(
        last_poll=time.monotonic, threads=lambda: threads, ready=lambda: True, stall_s=60
    )
    async with TestClient(TestServer(http_app(Metrics(), health))) as client:
        response = await client.get("/healthz")
        return response.status, (await response.json())["status"]


async def test_healthz_names_the_thread_that_ended() -> None:
    assert await healthz({"consumer": True, "token slots": True}) == (200, "ok")
    assert await healthz({"consumer": True, "token slots": False}) == (
        503,
        "token slots thread ended",
    )
    assert await healthz({"dlq producer": False, "originals reader": False}) == (
        503,
        "dlq producer thread ended; originals reader thread ended",
    )


class _Broken:
    """A producer whose poll raises, as a callback that raised would make it."""

    def poll(self, timeout_s: float) -> int:
        raise RuntimeError("a delivery callback raised")

    def flush(self, timeout_s: float) -> int:
        return 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_producer_whose_poll_thread_ended_is_dead_and_one_closed_is_not() -> None:
    producer = AckedProducer(NOWHERE, name="test")
    assert producer.alive
    producer.close(0)
    assert producer.alive  # stopped on request: not a death

    broken = AckedProducer(NOWHERE, name="test")
    real, broken._producer = broken._producer, _Broken()  # type: ignore[assignment]
    wait_until(lambda: not broken.alive, timeout_s=10, what="the poll thread to end")
    real.flush(0)


async def test_the_token_slots_thread_that_failed_is_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing:
        def __init__(self, config: dict[str, Any]) -> None:
            pass

        def subscribe(self, topics: list[str], **callbacks: Any) -> None:
            raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))

        def close(self) -> None:
            pass

    monkeypatch.setattr("stream.leases.Consumer", Refusing)
    leases = KafkaLeases(
        NOWHERE, NOWHERE, topic="t", group_id="g", slots=2, loop=asyncio.get_running_loop()
    )
    monkeypatch.setattr(leases, "_ensure_topic", lambda: 2)
    assert leases.alive  # not started yet
    await leases.start()
    await wait_until_async(lambda: not leases.alive, timeout_s=10, what="the slots thread to end")
    await leases.close(1)
    assert leases.alive  # closed: whatever it was, it is not a death now


@pytest.fixture
def reader() -> Iterator[OriginalReader]:
    original = OriginalReader({**NOWHERE, "group.id": "g.reader"})
    yield original
    asyncio.run(original.close())


async def test_a_stuck_read_makes_the_reader_dead(
    reader: OriginalReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, started = threading.Event(), threading.Event()

    def stuck(wanted: Any) -> dict[Any, Any]:
        started.set()
        release.wait()
        return {}

    monkeypatch.setattr(reader, "_read_held", stuck)
    read = asyncio.ensure_future(reader.read([("t", 0, 1)]))
    await wait_until_async(started.is_set, timeout_s=10, what="the read to start")
    assert reader.alive
    now = time.monotonic()
    monkeypatch.setattr("stream.originals.time", SimpleNamespace(monotonic=lambda: now + 121))
    assert not reader.alive
    release.set()
    assert await read == []
    assert reader.alive


async def test_reads_that_keep_raising_make_the_reader_dead(
    reader: OriginalReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(wanted: Any) -> dict[Any, Any]:
        raise KafkaException(KafkaError(KafkaError._FATAL))

    monkeypatch.setattr(reader, "_read_held", failing)
    for _ in range(4):
        with pytest.raises(KafkaException):
            await reader.read([("t", 0, 1)])
        assert reader.alive
    with pytest.raises(KafkaException):
        await reader.read([("t", 0, 1)])
    assert not reader.alive
    monkeypatch.setattr(reader, "_read_held", lambda wanted: {})
    await reader.read([("t", 0, 1)])
    assert reader.alive


def test_the_pipeline_reports_every_thread() -> None:
    alive = SimpleNamespace(alive=True)
    pipeline = SimpleNamespace(
        _stop_by=0.0,
        _leases=SimpleNamespace(alive=False),
        _sharing=alive,
        _dlq=alive,
        _receipts=alive,
        _reconciler=SimpleNamespace(
            threads=lambda: {"reconcile consumer": True, "originals reader": False}
        ),
    )
    consumer = SimpleNamespace(done=SimpleNamespace(done=lambda: True))
    assert Pipeline._threads(pipeline, consumer) == {  # type: ignore[arg-type]
        "consumer": False,
        "token slots": False,
        "token sharing": True,
        "dlq producer": True,
        "receipts producer": True,
        "reconcile consumer": True,
        "originals reader": False,
    }
    pipeline._stop_by = 12.0  # the stop began: its threads end on purpose
    assert Pipeline._threads(pipeline, consumer)["consumer"]  # type: ignore[arg-type]
