"""Scenario 2: an API storm. 30 % of requests answered 5xx, 429 bursts with and without
``Retry-After``, 2 s latency spikes, then an outage (10 s bounded, 30 s soak) that first answers 503
and then cuts connections. Transient failures must never become loss (docs/design.md#retry)."""

from __future__ import annotations

import time

import pytest

from tests.support.scenario import DEADLINE_S, SOAK, ScenarioFactory, sized
from tests.support.verifier import conclude, verify, wait_complete
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

EVENTS = sized(30_000, 300_000)
PARTITIONS = 4
OUTAGE_S = 30.0 if SOAK else 10.0


def test_an_api_storm_loses_nothing(scenario: ScenarioFactory) -> None:
    started = time.monotonic()
    run = scenario(PARTITIONS, seed=10)  # the random faults repeat from run to run
    sandbox, ledger = run.sandbox, run.ledger
    set_faults = sandbox.set_faults
    set_faults(error_rate=0.3, spike_probability=0.05, spike_ms=2_000)
    run.produce(EVENTS, invalid_every=50)
    # Batches of 100: five times the requests, so the storm has something to hit.
    service = run.service(rate_limit_rps="20", batch_max_records="100")
    valid = len(ledger.valid)

    def reached(fraction: float) -> None:
        wait_until(
            lambda: sandbox.accepted_count() >= fraction * valid,
            timeout_s=DEADLINE_S,
            what=f"{fraction:.0%} accepted",
        )

    reached(0.15)
    set_faults(throttle_next=30, throttle_retry_after_s=1)
    reached(0.3)
    set_faults(throttle_next=30, throttle_retry_after_s=None)
    reached(0.45)
    # The outage: first half 503s, second half connections cut without an answer.
    with run.offsets() as offsets:
        # Each half lasts until the test's next setting ends it: an outage timed to end by
        # itself would end before the test's own steps (its sleeps, reading the offsets) are
        # over, and a request accepted in that gap would look like one accepted in the outage.
        set_faults(outage="503", outage_s=None)
        # A request that passed the outage check just before it began may still be recorded.
        time.sleep(1)
        before = sandbox.accepted_count()
        time.sleep(OUTAGE_S / 2 - 1)
        set_faults(outage="drop", outage_s=None)
        committed_in_outage = offsets.committed()
        time.sleep(OUTAGE_S / 2)
        assert sandbox.accepted_count() == before, "the API accepted records during its outage"
        assert offsets.committed() != offsets.ends(), "the run was over before the outage ended"
    assert service.proc.poll() is None, "the service died in the storm"
    set_faults(outage="off")
    wait_complete(ledger, sandbox, run.group, DEADLINE_S)
    report = verify(
        scenario="2. API storm",
        ledger=ledger,
        sandbox=sandbox,
        group=run.group,
        started=started,
        notes={
            "outage_s": OUTAGE_S,
            "committed_during_outage": sum(max(0, c) for c in committed_in_outage),
        },
    )
    conclude(report, service)
    requests = report.notes["api_requests"]
    assert isinstance(requests, dict)
    for status in ("429", "500", "502", "503", "dropped"):
        assert requests.get(status, 0) > 0, f"the storm never answered {status}: {requests}"
