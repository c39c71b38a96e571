"""Scenario 1: ``kill -9`` of the service five times during a run, each time restarted."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.conftest import Broker
from tests.faults.conftest import DEADLINE_S, FAST_SESSION, sized
from tests.faults.events import mixed
from tests.faults.verifier import (
    Ledger,
    Offsets,
    accepted_count,
    api_stats,
    verify,
    wait_complete,
    wait_until,
)
from tests.integration.conftest import SandboxThread, Service

pytestmark = [pytest.mark.faults, pytest.mark.integration]

EVENTS = sized(50_000, 500_000)
KILLS = 5
PARTITIONS = 6


def test_kill_9_five_times_loses_nothing(
    kafka: Broker,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
    api: Callable[..., SandboxThread],
    service_factory: Callable[..., Service],
) -> None:
    started = time.monotonic()
    topic, group = topic_factory(partitions=PARTITIONS), group_factory()
    sandbox = api()
    # A slow, quota-bound API keeps records in flight when the kill lands.
    sandbox.run(lambda: sandbox.sandbox.set_faults(latency_ms=50))
    ledger = Ledger(kafka.bootstrap_servers, topic, PARTITIONS)
    ledger.produce(mixed(EVENTS, int(time.time() * 1000), invalid_every=100))
    settings = {"rate_limit_rps": "8", "kafka_config": FAST_SESSION}
    offsets = Offsets(kafka.bootstrap_servers, group, topic, PARTITIONS)
    kills = []
    try:
        for k in range(KILLS):
            service = service_factory(sandbox.url, topic, group, **settings)
            # Kill points spread over the run: after 1/7 … 5/7 of the valid events were accepted.
            target = (k + 1) * len(ledger.valid) // (KILLS + 2)
            wait_until(
                lambda t=target: accepted_count(sandbox) >= t, DEADLINE_S, f"{target} accepted"
            )
            service.signal(signal.SIGKILL)
            service.wait(10)
            committed = offsets.committed()
            assert committed != offsets.ends(), "the run was over before the kill"
            kills.append(
                {
                    "accepted": accepted_count(sandbox),
                    "committed": sum(max(0, c) for c in committed),
                }
            )
    finally:
        offsets.close()
    final = service_factory(sandbox.url, topic, group, **settings)
    wait_complete(ledger, sandbox, group, DEADLINE_S)
    report = verify(
        scenario="1. kill -9 x5",
        ledger=ledger,
        sandbox=sandbox,
        group=group,
        dlq_topic=f"{topic}.dlq",
        started=started,
        notes={"kills": kills, **api_stats(sandbox)},
    )
    final.signal(signal.SIGTERM)
    assert final.wait(30) == 0
    report.show()
    report.check()
