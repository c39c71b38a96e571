"""Scenario 3: the broker stopped and restarted mid-run, on the same ports with the same data; the
service rides it out without being restarted. Its own broker: the session's one stays up.

The broker stays away longer than the service's session timeout, so the service loses its
partitions (paused for backpressure at the time) and must rejoin and fetch them again."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from stream.devkafka import LocalKafka
from tests.support.events import Ledger, events
from tests.support.kafka import create_topic
from tests.support.sandbox import SandboxThread
from tests.support.scenario import DEADLINE_S, FAST_SESSION, SOAK, sized
from tests.support.service import Service
from tests.support.verifier import conclude, verify, wait_complete
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

EVENTS = sized(20_000, 200_000)
PARTITIONS = 4
DOWN_S = 60.0 if SOAK else 10.0
"""How long the broker stays down (besides its shutdown and start, a few seconds each): longer than
the 6 s session timeout the service runs with here (``FAST_SESSION``)."""


@pytest.fixture
def broker() -> Iterator[LocalKafka]:
    local = LocalKafka()
    local.start()
    yield local
    local.stop()


def test_a_broker_restart_loses_nothing(
    broker: LocalKafka,
    group_factory: Callable[[], str],
    sandbox_thread: Callable[..., SandboxThread],
    service_factory: Callable[..., Service],
) -> None:
    started = time.monotonic()
    topic, group = create_topic(broker.bootstrap_servers, PARTITIONS), group_factory()
    sandbox = sandbox_thread()
    sandbox.set_faults(latency_ms=30)
    ledger = Ledger(broker.bootstrap_servers, topic, PARTITIONS)
    now_ms = int(time.time() * 1000)
    ledger.produce(events(EVENTS // 2, now_ms=now_ms, invalid_every=40))
    service = service_factory(
        sandbox.url,
        topic,
        group,
        kafka_bootstrap_servers=broker.bootstrap_servers,
        rate_limit_rps="2",
        max_buffered_records="3000",  # paused when the broker goes; must fetch again after
        kafka_config=FAST_SESSION,
    )
    half = len(ledger.valid)
    wait_until(
        lambda: sandbox.accepted_count() >= half // 4, timeout_s=120, what="a quarter delivered"
    )

    stopping = time.monotonic()
    broker.stop(keep_data=True)
    at_stop = sandbox.accepted_count()
    time.sleep(DOWN_S)
    broker.start()
    down_s = time.monotonic() - stopping
    assert service.proc.poll() is None, "the service died with the broker"
    ledger.produce(events(EVENTS - EVENTS // 2, now_ms=now_ms, invalid_every=40, start=EVENTS // 2))

    wait_complete(ledger, sandbox, group, DEADLINE_S)
    assert service.proc.poll() is None, "the service was not meant to be restarted"
    messages = [entry["message"] for entry in service.lines()]
    report = verify(
        scenario="3. broker restart",
        ledger=ledger,
        sandbox=sandbox,
        group=group,
        started=started,
        notes={
            "broker_down_s": round(down_s, 1),
            "accepted_at_stop": at_stop,
            "commit_failures_logged": sum(m.startswith("commit") for m in messages),
            "dlq_retries_logged": sum(m.startswith("dead-letter write") for m in messages),
            "partitions_lost": sum(m.startswith("lost") for m in messages),
        },
    )
    conclude(report, service)
    assert report.notes["partitions_lost"], "the outage was meant to outlast the session"
