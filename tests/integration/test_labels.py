"""Foreign label ids against the account's label registry (docs/design.md#labels), end to end.

Two accounts own one label each in the sandbox; 0.5% of the events carry one of three label ids
that no account owns. With the registry readable, none of those reaches a request: full batches,
no 400, the drain at the quota. With the labels endpoint down for the whole run, each foreign label
costs one probe per account. A label created while the service runs is used without a restart.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial

import pytest

from tests.support.events import ACCOUNTS, LABEL, Event, intent, valid
from tests.support.sandbox import SandboxThread
from tests.support.scenario import Scenario, ScenarioFactory
from tests.support.verifier import Report, verify, wait_complete

pytestmark = pytest.mark.integration

FOREIGN = (
    "3c1a2b4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
    "4d2b3c5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e",
    "5e3c4d6f-7a8b-4c9d-8e1f-2a3b4c5d6e7f",
)
"""Label ids no account owns."""
NEW_LABEL = "6f4d5e7a-8b9c-4dae-9f20-3b4c5d6e7f80"
EVENTS = 20_000
FOREIGN_EVERY = 200
"""0.5% of the events."""
RPS = 2
"""Each account's quota as the service is told it: 20 full batches take about 10 s. The sandbox
allows twice that, so that the drain measures what labels cost, not how the service answers a
429 (docs/design.md#quota)."""
PACE = {"rate_limit_rps": str(RPS), "batch_linger_ms": "1000"}
"""The service's settings: full batches at the quota."""
OWNED = {account: frozenset({LABEL}) for account in ACCOUNTS}
"""Each account owns one label in the sandbox."""
PARTITIONS = 4
DEADLINE_S = 180.0


def mixed(count: int) -> Iterator[Event]:
    """``count`` valid events, but every ``FOREIGN_EVERY``-th carries a foreign label id."""
    now_ms = time.time_ns() // 1_000_000
    for i in range(count):
        # One in FOREIGN_EVERY, alternately an odd and an even index: both accounts get some.
        if i % FOREIGN_EVERY == FOREIGN_EVERY - 1 - (i // FOREIGN_EVERY) % 2:
            event = intent(i, now_ms) | {"label_id": FOREIGN[(i // FOREIGN_EVERY) % len(FOREIGN)]}
            yield Event(f"foreign-{i}", json.dumps(event).encode(), "unknown_label", b"foreign")
        else:
            yield valid(i, now_ms)


def finish(run: Scenario, started: float, scenario: str) -> Report:
    wait_complete(run.ledger, run.sandbox, run.group, DEADLINE_S)
    report = verify(
        scenario=scenario, ledger=run.ledger, sandbox=run.sandbox, group=run.group, started=started
    )
    report.show()
    report.check()
    return report


def refused(sandbox: SandboxThread) -> dict[str, int]:
    """Per account, requests the API answered 400."""
    stats = sandbox.run(sandbox.sandbox.stats)
    return {account: s.requests.get("400", 0) for account, s in stats.accounts.items()}


def batches(sandbox: SandboxThread) -> dict[str, list[tuple[float, int]]]:
    """Per account, each accepted request's receive time (s) and record count, in order."""
    seen: dict[str, Counter[str]] = {}
    arrived: dict[str, dict[str, float]] = {}
    for record in sandbox.run(sandbox.sandbox.accepted):
        seen.setdefault(record.account, Counter())[record.batch_id] += 1
        arrived.setdefault(record.account, {})[record.batch_id] = record.received_ms / 1000
    return {
        account: sorted((arrived[account][b], n) for b, n in counts.items())
        for account, counts in seen.items()
    }


def test_foreign_labels_never_reach_a_batch(scenario: ScenarioFactory) -> None:
    run = scenario(PARTITIONS, rate_limit_rps=2 * RPS, labels=OWNED)
    sandbox = run.sandbox

    started = time.monotonic()
    run.service(**PACE)
    run.ledger.produce(mixed(EVENTS))
    report = finish(run, started, "foreign labels")

    assert report.dead_lettered == EVENTS // FOREIGN_EVERY
    assert refused(sandbox) == dict.fromkeys(ACCOUNTS, 0)
    for account, sent in batches(sandbox).items():
        full = [n for _, n in sent[:-1]]  # the last batch of an account holds what is left
        mean = sum(full) / len(full)
        drain_s = sent[-1][0] - sent[0][0]
        ideal_s = (len(sent) - 1) / RPS
        print(
            f"{account}: {len(sent)} requests, mean {mean:.0f}, {drain_s:.1f} s (ideal {ideal_s}); "
            f"answers {sandbox.run(sandbox.sandbox.stats).accounts[account].requests}; "
            f"gaps {[round(b[0] - a[0], 2) for a, b in itertools.pairwise(sent)]}"
        )
        assert mean >= 450
        assert drain_s <= 1.2 * ideal_s


def test_a_label_created_while_running_is_used_at_once(scenario: ScenarioFactory) -> None:
    run = scenario(PARTITIONS, labels=OWNED)
    started = time.monotonic()
    run.service(**PACE)
    run.produce(100)
    wait_complete(run.ledger, run.sandbox, run.group, DEADLINE_S, "the first events")
    for account in ACCOUNTS:  # created in the console while the service runs
        run.sandbox.run(partial(run.sandbox.sandbox.learn_labels, account, [NEW_LABEL]))
    run.produce(2_000, fields={"label_id": NEW_LABEL})

    report = finish(run, started, "a label created while running")

    assert report.delivered == 2_100
    assert report.dlq_records == 0


def test_an_unreadable_registry_costs_a_probe_per_foreign_label(scenario: ScenarioFactory) -> None:
    run = scenario(PARTITIONS, rate_limit_rps=2 * RPS, labels=OWNED)
    run.sandbox.set_faults(labels_status=503)

    started = time.monotonic()
    run.service(**PACE)
    run.ledger.produce(mixed(EVENTS))
    report = finish(run, started, "foreign labels, registry down")

    assert report.dead_lettered == EVENTS // FOREIGN_EVERY
    stats = run.sandbox.run(run.sandbox.sandbox.stats)
    assert all(s.labels.get("503", 0) >= 1 for s in stats.accounts.values())
    for account, count in refused(run.sandbox).items():
        print(f"{account}: {count} requests refused with 400")
        assert count <= 2 * len(FOREIGN)


def test_label_ids_match_in_any_case(scenario: ScenarioFactory) -> None:
    """A label registered in upper case (the labels endpoint lists it so) matches events that name
    it in lower, upper or mixed case: none is dead-lettered, none probed or refused."""
    run = scenario(PARTITIONS, labels={account: frozenset({LABEL.upper()}) for account in ACCOUNTS})
    started = time.monotonic()
    service = run.service(**PACE)
    now_ms = time.time_ns() // 1_000_000
    cases = (LABEL, LABEL.upper(), LABEL[:18] + LABEL[18:].upper())
    run.ledger.produce(
        Event(
            f"9198{i:08d}",
            json.dumps(intent(i, now_ms) | {"label_id": cases[i % 3]}).encode(),
            None,
        )
        for i in range(3_000)
    )

    report = finish(run, started, "label ids in any case")

    assert report.delivered == 3_000
    assert report.dlq_records == 0
    assert refused(run.sandbox) == dict.fromkeys(ACCOUNTS, 0)
    probes = [k for k in service.metrics() if k.startswith("dcr_label_probes_total")]
    assert probes == []
