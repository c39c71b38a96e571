"""Scenario 1: ``kill -9`` of the service five times during a run, each time restarted."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.support.scenario import DEADLINE_S, FAST_SESSION, ScenarioFactory, sized
from tests.support.verifier import conclude, verify, wait_complete
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

EVENTS = sized(50_000, 500_000)
KILLS = 5
PARTITIONS = 6


def test_kill_9_five_times_loses_nothing(scenario: ScenarioFactory) -> None:
    started = time.monotonic()
    run = scenario(PARTITIONS)
    sandbox, ledger = run.sandbox, run.ledger
    # A slow, quota-bound API keeps records in flight when the kill lands.
    sandbox.set_faults(latency_ms=50)
    run.produce(EVENTS, invalid_every=100)
    settings = {"rate_limit_rps": "8", "kafka_config": FAST_SESSION}
    kills = []

    def accepted(target: int) -> Callable[[], bool]:
        return lambda: sandbox.accepted_count() >= target

    with run.offsets() as offsets:
        for k in range(KILLS):
            service = run.service(**settings)
            # Kill points spread over the run: after 1/7 … 5/7 of the valid events were accepted.
            target = (k + 1) * len(ledger.valid) // (KILLS + 2)
            wait_until(accepted(target), timeout_s=DEADLINE_S, what=f"{target} accepted")
            service.signal(signal.SIGKILL)
            service.wait(10)
            committed = offsets.committed()
            assert committed != offsets.ends(), "the run was over before the kill"
            kills.append(
                {
                    "accepted": sandbox.accepted_count(),
                    "committed": sum(max(0, c) for c in committed),
                }
            )
    final = run.service(**settings)
    wait_complete(ledger, sandbox, run.group, DEADLINE_S)
    report = verify(
        scenario="1. kill -9 x5",
        ledger=ledger,
        sandbox=sandbox,
        group=run.group,
        started=started,
        notes={"kills": kills},
    )
    conclude(report, final)
