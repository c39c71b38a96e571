"""Operations (issue 7): /metrics agrees with the sandbox and the DLQ, liveness, readiness,
secrets kept out of every output, receipts."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import aiohttp
import pytest
from confluent_kafka import Consumer

import stream.consumer
from stream.app import Pipeline
from stream.config import load
from stream.sandbox import Sandbox, SandboxConfig
from tests.support.kafka import Broker, read_topic, unique
from tests.support.sandbox import TOKEN, SandboxFactory
from tests.support.scenario import ScenarioFactory
from tests.support.service import RUN_TIMEOUT_S, get_text, total
from tests.support.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.integration


def test_metrics_agree_with_the_sandbox_and_the_dlq(scenario: ScenarioFactory) -> None:
    run = scenario(partitions=4)
    sandbox, produced = run.sandbox, run.ledger
    run.produce(5_000, invalid_every=25)
    service = run.service()
    wait_until(run.delivered(), timeout_s=RUN_TIMEOUT_S, what="deliveries")
    wait_until(service.joined, timeout_s=RUN_TIMEOUT_S)

    def settled() -> bool:
        samples = service.metrics()
        return (
            total(samples, "dcr_records_delivered_total")
            + total(samples, "dcr_records_dead_lettered_total")
            == 5_000
            and total(samples, "dcr_buffered_records") == 0
        )

    wait_until(settled, timeout_s=RUN_TIMEOUT_S, what="every record finished in the metrics")
    samples = service.metrics()
    accepted = sum(sandbox.accepted_receivers().values())
    dead = read_topic(
        run.kafka.bootstrap_servers, f"{run.topic}.dlq", at_least=len(produced.invalid)
    )
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


class Started(NamedTuple):
    pipeline: Pipeline
    held: _Held
    sandbox: Sandbox
    port: int
    """The pipeline's HTTP port."""


InProcess = Callable[..., Awaitable[Started]]


@pytest.fixture
async def in_process(
    kafka: Broker,
    topic_factory: Callable[..., str],
    sandbox_factory: SandboxFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[InProcess]:
    """``await in_process(held=names, **DCR_env)``: a Pipeline in this loop against an in-loop
    sandbox, its consumer's calls named in ``held`` blocked until released."""
    running: list[tuple[asyncio.Event, asyncio.Task[int]]] = []
    holders: list[_Held] = []

    async def start(*, held: set[str], **env: str) -> Started:
        sandbox = await sandbox_factory(SandboxConfig(static_token=TOKEN, rate_limit_rps=1000))

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
        running.append((stop, task))
        await wait_until_async(
            lambda: pipeline.http_port is not None and bool(holders),
            timeout_s=30,
            what="the pipeline to start",
        )
        assert pipeline.http_port is not None
        return Started(pipeline, holders[0], sandbox, pipeline.http_port)

    yield start
    for holder in holders:
        holder.release.set()
    for stop, task in running:
        stop.set()
        await asyncio.wait_for(task, 60)


async def probe(session: aiohttp.ClientSession, port: int, path: str) -> int:
    async with session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status


async def until_status(session: aiohttp.ClientSession, port: int, path: str, status: int) -> None:
    async def answers() -> bool:
        return await probe(session, port, path) == status

    await wait_until_async(
        answers, timeout_s=30, interval_s=0.05, what=f"{path} to answer {status}"
    )


async def test_readiness_waits_for_the_assignment(in_process: InProcess) -> None:
    _, held, _, port = await in_process(held={"subscribe"})
    async with aiohttp.ClientSession() as session:
        assert await probe(session, port, "/readyz") == 503
        assert await probe(session, port, "/healthz") == 200
        held.release.set()
        await until_status(session, port, "/readyz", 200)


async def test_liveness_follows_the_consumer_not_the_api(in_process: InProcess) -> None:
    pipeline, held, sandbox, port = await in_process(held=set(), DCR_LIVENESS_STALL_S="1")
    sandbox.set_faults(outage="503")
    async with aiohttp.ClientSession() as session:
        await until_status(session, port, "/readyz", 200)
        assert await probe(session, port, "/healthz") == 200  # the API being down is not our death
        held.held.add("consume")  # the next consume blocks: the consumer stops polling
        await until_status(session, port, "/healthz", 503)
        consumer = pipeline._consumer
        assert consumer is not None
        consumer.waiting_on_broker = True  # as during a commit to an unreachable coordinator
        await until_status(session, port, "/healthz", 200)
        consumer.waiting_on_broker = False
        await until_status(session, port, "/healthz", 503)
        held.release.set()
        await until_status(session, port, "/healthz", 200)


def test_secrets_never_leave_the_process(
    scenario: ScenarioFactory, group_factory: Callable[[], str]
) -> None:
    api_key, sasl_password = "api-key-" + unique("k"), "sasl-pw-" + unique("p")
    run = scenario(partitions=2, key_id="key-1", api_key=api_key)
    sandbox, produced = run.sandbox, run.ledger
    run.produce(1_000, invalid_every=10)
    secret_config = json.dumps({"sasl.password": sasl_password})
    services = [
        # A static token, and a key pair whose minted tokens are secrets too; each in a group of
        # its own, so that both deliver everything.
        run.service(
            kafka_group_id=group_factory(),
            kafka_secret_config=secret_config,
            log_level="DEBUG",
        ),
        run.service(
            kafka_group_id=group_factory(),
            api_token="",
            api_key_id="key-1",
            api_key=api_key,
            kafka_secret_config=secret_config,
            log_level="DEBUG",
        ),
    ]
    for service in services:
        wait_until(service.joined, timeout_s=RUN_TIMEOUT_S)
    wait_until(
        lambda: sum(sandbox.accepted_receivers().values()) >= 2 * len(produced.valid),
        timeout_s=RUN_TIMEOUT_S,
        what="both runs delivered",
    )
    minted = sandbox.run(lambda: list(sandbox.sandbox._tokens))
    assert minted, "the key-pair run minted no token"
    secrets = [TOKEN, api_key, sasl_password, *minted]
    outputs = [get_text(service.http_port(), "/metrics") for service in services]
    for service in services:
        service.signal(signal.SIGTERM)
        assert service.wait(30) == 0
        outputs.append(service.log.read_text())
    dlq = f"{run.topic}.dlq"
    for message in read_topic(run.kafka.bootstrap_servers, dlq, at_least=2 * len(produced.invalid)):
        outputs.append(repr(message.headers()))
    for text in outputs:
        for secret in secrets:
            assert secret not in text


def test_receipts_add_up_to_what_was_delivered(scenario: ScenarioFactory) -> None:
    run, receipts = scenario(partitions=3), unique("receipts")
    produced = run.ledger
    run.produce(3_000, invalid_every=30)
    service = run.service(receipts_topic=receipts, api_version="v2")
    wait_until(run.delivered(), timeout_s=RUN_TIMEOUT_S, what="deliveries")
    run.wait_committed(timeout_s=RUN_TIMEOUT_S)
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0
    messages = read_topic(
        run.kafka.bootstrap_servers, receipts, at_least=len(produced.valid) // 500
    )
    bodies = [json.loads(m.value() or b"") for m in messages]
    assert sum(b["records"] for b in bodies) == len(produced.valid)
    assert all(b["status"] == 200 and b["batch_id"] for b in bodies)
    covered = sum(
        last - first + 1
        for b in bodies
        for ranges in b["sources"].values()
        for first, last in ranges
    )
    assert covered >= len(produced.valid)
