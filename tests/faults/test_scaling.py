"""Scenario 4: one replica, then three in the same group, then one again (the first, which gets
back partitions it had paused for backpressure before they were taken away). The account's quota
is the sandbox's, shared by all replicas (docs/design.md#scaling): three replicas at the full rate
meet 429s."""

from __future__ import annotations

import signal
import time
from functools import partial

import pytest

from tests.support.scenario import DEADLINE_S, ScenarioFactory, sized
from tests.support.service import Service
from tests.support.verifier import conclude, verify, wait_complete
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

EVENTS = sized(60_000, 600_000)
PARTITIONS = 6
RPS = 4


def owns_partitions(service: Service) -> bool:
    return any(
        e["message"].startswith("assigned ") and e["message"] != "assigned nothing"
        for e in service.lines()
    )


def test_scaling_1_3_1_loses_nothing(scenario: ScenarioFactory) -> None:
    started = time.monotonic()
    run = scenario(PARTITIONS, rate_limit_rps=RPS)
    sandbox, ledger = run.sandbox, run.ledger
    sandbox.set_faults(latency_ms=30)
    run.produce(EVENTS, invalid_every=100)
    valid = len(ledger.valid)
    settings = {
        "rate_limit_rps": str(RPS),  # each replica the whole quota: together they exceed it
        "max_buffered_records": "4000",  # backpressure pauses partitions throughout the run
    }

    def delivered(more: float) -> None:
        """Wait until another ``more`` (a fraction) of the valid events was accepted."""
        target = sandbox.accepted_count() + more * valid
        wait_until(
            lambda: sandbox.accepted_count() >= target,
            timeout_s=DEADLINE_S,
            what=f"{target:.0f} accepted",
        )

    first = run.service(**settings)
    delivered(0.1)
    more = [run.service(**settings) for _ in range(2)]
    for service in more:
        wait_until(
            partial(owns_partitions, service),
            timeout_s=120,
            what="a new replica to own partitions",
        )
    delivered(0.15)  # three replicas at work
    with run.offsets() as offsets:
        assert offsets.committed() != offsets.ends(), "the run was over before the scale-down"
    for service in more:
        service.signal(signal.SIGTERM)
    exits = [service.wait(60) for service in more]
    assert exits == [0, 0], exits
    wait_complete(ledger, sandbox, run.group, DEADLINE_S)
    messages = [e["message"] for s in (first, *more) for e in s.lines()]
    report = verify(
        scenario="4. scale 1-3-1",
        ledger=ledger,
        sandbox=sandbox,
        group=run.group,
        started=started,
        notes={
            "assignments": sum(m.startswith("assigned") for m in messages),
            "revocations": sum(m.startswith("revoking") for m in messages),
        },
    )
    conclude(report, first)
