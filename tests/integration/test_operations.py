"""Operations (issue 7): /metrics agrees with the sandbox and the DLQ, liveness, readiness,
secrets kept out of every output, receipts."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from confluent_kafka import Consumer

import stream.consumer
from stream.app import Pipeline
from stream.config import load
from stream.sandbox import Sandbox, SandboxConfig
from tests.conftest import Broker, unique
from tests.integration.conftest import (
    TOKEN,
    SandboxThread,
    Service,
    all_committed,
    produce_events,
    read_dlq,
    wait_for,
)

pytestmark = pytest.mark.integration


def port_of(service: Service) -> int:
    for entry in service.lines():
        found = re.search(r"on port (\d+)$", entry["message"])
        if found:
            return int(found[1])
    raise AssertionError("the service logged no http port")


def scrape_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def scrape(port: int) -> dict[str, float]:
    """Samples of /metrics: ``name{labels}`` → value."""
    samples = {}
    for line in scrape_text(port).splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def test_metrics_agree_with_the_sandbox_and_the_dlq(
    kafka: Broker,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
    sandbox_thread: Callable[..., SandboxThread],
    service_factory: Callable[..., Service],
) -> None:
    topic, group = topic_factory(partitions=4), group_factory()
    sandbox = sandbox_thread()
    produced = produce_events(kafka, topic, 5_000, invalid_every=25)
    service = service_factory(sandbox.url, topic, group)
    wait_for(lambda: set(sandbox.accepted_receivers()) >= produced.valid, what="deliveries")
    wait_for(service.joined)
    port = port_of(service)

    def settled() -> bool:
        samples = scrape(port)
        return (
            total(samples, "dcr_records_delivered_total")
            + total(samples, "dcr_records_dead_lettered_total")
            == 5_000
            and total(samples, "dcr_buffered_records") == 0
        )

    wait_for(settled, what="every record finished in the metrics")
    samples = scrape(port)
    accepted = sum(sandbox.accepted_receivers().values())
    dead = read_dlq(kafka, f"{topic}.dlq", len(produced.invalid))
    assert total(samples, "dcr_records_delivered_total") == accepted == len(produced.valid)
    assert total(samples, "dcr_records_dead_lettered_total") == len(dead) == 200
    assert total(samples, "dcr_events_consumed_total") == 5_000
    for code in {h for h in produced.invalid.values()}:
        expected = sum(1 for c in produced.invalid.values() if c == code)
        assert total(samples, f'dcr_records_dead_lettered_total{{code="{code}"') == expected or (
            sum(v for k, v in samples.items() if f'code="{code}"' in k) == expected
        )
    requests = sandbox.run(sandbox.sandbox.stats).totals.requests
    assert total(samples, "dcr_api_requests_total") == sum(requests.values())
    assert samples["dcr_assigned_partitions"] == 4
    assert total(samples, "dcr_api_request_duration_seconds_count") == sum(requests.values())
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0


class _Held:
    """Stands in for the confluent Consumer: the calls named in ``held`` block until released,
    everything else goes to the real consumer. How a test stalls the consumer thread."""

    def __init__(self, real: Consumer, held: set[str]) -> None:
        self._real = real
        self.held = held
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)
        if name not in self.held:
            return attribute

        def blocked(*args: Any, **kwargs: Any) -> Any:
            self.release.wait()
            return attribute(*args, **kwargs)

        return blocked


@pytest.fixture
async def in_process(
    kafka: Broker, topic_factory: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., Any]]:
    """Runs a Pipeline in this loop against an in-loop sandbox; yields a starter."""
    running: list[tuple[asyncio.Event, asyncio.Task[int], Sandbox]] = []
    holders: list[_Held] = []

    async def start(*, held: set[str], **env: str) -> tuple[Pipeline, _Held, Sandbox]:
        sandbox = Sandbox(SandboxConfig(static_token=TOKEN, rate_limit_rps=1000))
        await sandbox.start()

        def consumer(config: dict[str, Any]) -> _Held:
            holders.append(_Held(Consumer(config), held))
            return holders[-1]

        monkeypatch.setattr(stream.consumer, "Consumer", consumer)
        config = load(
            {
                "DCR_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                "DCR_KAFKA_TOPICS": topic_factory(partitions=2),
                "DCR_KAFKA_GROUP_ID": unique("group"),
                "DCR_API_BASE_URL": sandbox.url,
                "DCR_API_TOKEN": TOKEN,
                "DCR_HTTP_PORT": "0",
                **env,
            }
        )
        pipeline = Pipeline(config)
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(pipeline.run(stop))
        running.append((stop, task, sandbox))
        end = time.monotonic() + 30
        while pipeline.http_port is None or not holders:
            assert time.monotonic() < end, "the pipeline did not start"
            await asyncio.sleep(0.01)
        return pipeline, holders[0], sandbox

    yield start
    for holder in holders:
        holder.release.set()
    for stop, task, sandbox in running:
        stop.set()
        await asyncio.wait_for(task, 60)
        await sandbox.stop()


async def probe(session: aiohttp.ClientSession, port: int, path: str) -> int:
    async with session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status


async def until_status(
    session: aiohttp.ClientSession, port: int, path: str, status: int, deadline_s: float = 30
) -> None:
    end = time.monotonic() + deadline_s
    while await probe(session, port, path) != status:
        assert time.monotonic() < end, f"{path} never answered {status}"
        await asyncio.sleep(0.05)


async def test_readiness_waits_for_the_assignment(in_process: Callable[..., Any]) -> None:
    pipeline, held, _ = await in_process(held={"subscribe"})
    async with aiohttp.ClientSession() as session:
        port = pipeline.http_port
        assert await probe(session, port, "/readyz") == 503
        assert await probe(session, port, "/healthz") == 200
        held.release.set()
        await until_status(session, port, "/readyz", 200)


async def test_liveness_follows_the_consumer_not_the_api(in_process: Callable[..., Any]) -> None:
    pipeline, held, sandbox = await in_process(held=set(), DCR_LIVENESS_STALL_S="1")
    sandbox.set_faults(outage="503")
    async with aiohttp.ClientSession() as session:
        port = pipeline.http_port
        await until_status(session, port, "/readyz", 200)
        assert await probe(session, port, "/healthz") == 200  # the API being down is not our death
        held.held.add("consume")  # the next consume blocks: the consumer stops polling
        await until_status(session, port, "/healthz", 503)
        consumer = pipeline._consumer
        consumer.waiting_on_broker = True  # as during a commit to an unreachable coordinator
        await until_status(session, port, "/healthz", 200)
        consumer.waiting_on_broker = False
        await until_status(session, port, "/healthz", 503)
        held.release.set()
        await until_status(session, port, "/healthz", 200)


def test_secrets_never_leave_the_process(
    kafka: Broker,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
    sandbox_thread: Callable[..., SandboxThread],
    service_factory: Callable[..., Service],
) -> None:
    api_key, sasl_password = "api-key-" + unique("k"), "sasl-pw-" + unique("p")
    topic = topic_factory(partitions=2)
    sandbox = sandbox_thread(key_id="key-1", api_key=api_key)
    produced = produce_events(kafka, topic, 1_000, invalid_every=10)
    secret_config = json.dumps({"sasl.password": sasl_password})
    runs = [
        # A static token, and a key pair whose minted tokens are secrets too.
        service_factory(
            sandbox.url,
            topic,
            group_factory(),
            kafka_secret_config=secret_config,
            log_level="DEBUG",
        ),
        service_factory(
            sandbox.url,
            topic,
            group_factory(),
            api_token="",
            api_key_id="key-1",
            api_key=api_key,
            kafka_secret_config=secret_config,
            log_level="DEBUG",
        ),
    ]
    for run in runs:
        wait_for(run.joined)
    wait_for(
        lambda: sum(sandbox.accepted_receivers().values()) >= 2 * len(produced.valid),
        what="both runs delivered",
    )
    minted = sandbox.run(lambda: list(sandbox.sandbox._tokens))
    assert minted, "the key-pair run minted no token"
    secrets = [TOKEN, api_key, sasl_password, *minted]
    outputs = [scrape_text(port_of(run)) for run in runs]
    for run in runs:
        run.signal(signal.SIGTERM)
        assert run.wait(30) == 0
        outputs.append(run.log.read_text())
    for message in read_dlq(kafka, f"{topic}.dlq", 2 * len(produced.invalid)):
        outputs.append(repr(message.headers()))
    for text in outputs:
        for secret in secrets:
            assert secret not in text


def test_receipts_add_up_to_what_was_delivered(
    kafka: Broker,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
    sandbox_thread: Callable[..., SandboxThread],
    service_factory: Callable[..., Service],
) -> None:
    topic, group, receipts = topic_factory(partitions=3), group_factory(), unique("receipts")
    sandbox = sandbox_thread()
    produced = produce_events(kafka, topic, 3_000, invalid_every=30)
    service = service_factory(sandbox.url, topic, group, receipts_topic=receipts, api_version="v2")
    wait_for(lambda: set(sandbox.accepted_receivers()) >= produced.valid, what="deliveries")
    wait_for(all_committed(kafka, group, topic, 3), what="commits")
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0
    messages = read_dlq(kafka, receipts, len(produced.valid) // 500)
    bodies = [json.loads(m.value()) for m in messages]
    assert sum(b["records"] for b in bodies) == len(produced.valid)
    assert all(b["status"] == 200 and b["batch_id"] for b in bodies)
    covered = sum(
        last - first + 1
        for b in bodies
        for ranges in b["sources"].values()
        for first, last in ranges
    )
    assert covered >= len(produced.valid)
