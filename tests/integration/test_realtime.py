"""Issue 16's acceptance: urgent records behind a full batch lane, with a real broker and the
sandbox at the documented limits (per token, 60 batch requests a minute and 100 single records a
second).

One account; its ten static tokens send ten batch requests a second, so a backlog of 40,000
normal events keeps its batch lane full for about eight seconds. Latency is measured from the
wall clock just before an event was produced to the sandbox's wall clock when the request that
carried it arrived (``Accepted.received_ms``): the producer, the broker, the consumer, the lane,
HTTP. Each test prints what it measured; the bounds themselves (500 ms, 2 s with the lane off) are
timings, measured by bench B3 on a quiet machine, not asserted here. What is asserted holds at any
speed: the urgent records overtake at least half of the backlog waiting when they were produced.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.support.events import Ledger
from tests.support.sandbox import SandboxThread
from tests.support.scenario import ACCOUNT, TOKENS, ScenarioFactory
from tests.support.service import total
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 6
BACKLOG = 40_000
URGENT = 100
DEADLINE_S = 180.0
MINUTE_MS = 60_000


def latencies_ms(sandbox: SandboxThread, ledger: Ledger, receivers: set[str]) -> list[int]:
    seen = sandbox.first_accepted()
    return sorted(seen[r].received_ms - ledger.produced_ms[r] for r in receivers)


def paths(sandbox: SandboxThread, receivers: set[str]) -> Counter[str]:
    seen = sandbox.first_accepted()
    return Counter(seen[r].path for r in receivers)


def urgent_behind_a_backlog(
    scenario: ScenarioFactory, **changes: str
) -> tuple[list[int], Counter[str], dict[str, float]]:
    """40,000 normal events, then, once the batch lane is full, 100 on the high-priority topic:
    the latencies of the 100, the paths they took, and the service's metrics at the end. The 100
    must overtake at least half of the backlog still waiting when they were produced."""
    run = scenario(PARTITIONS, documented=True)
    high = run.new_topic(partitions=1)
    sandbox = run.sandbox
    service = run.service(kafka_high_priority_topics=high.topic, **changes)
    wait_until(service.joined, timeout_s=60, what="the service to join")
    backlog = run.produce(BACKLOG)
    # The backlog is being sent, and the consumer has buffered up to its bound and paused.
    wait_until(
        lambda: (
            sandbox.accepted_count() >= 5_000 and total(service.metrics(), "dcr_paused_partitions")
        ),
        timeout_s=DEADLINE_S,
        what="the batch lane busy with the backlog and the normal partitions paused",
    )
    waiting = BACKLOG - sum(1 for r in sandbox.first_accepted() if r in backlog)
    urgent = run.produce(URGENT, to=high)
    wait_until(run.delivered(urgent), timeout_s=DEADLINE_S, what="the urgent events")
    wait_until(run.delivered(backlog), timeout_s=DEADLINE_S, what="the whole backlog")
    run.wait_committed(timeout_s=DEADLINE_S)
    metrics = service.metrics()
    paused = [e["message"] for e in service.lines() if e["message"].startswith("paused")]
    assert paused, "backpressure never paused the backlog's partitions"
    assert all(" normal partitions" in m for m in paused), paused
    seen = sandbox.first_accepted()
    last_urgent_ms = max(seen[r].received_ms for r in urgent)
    overtaken = sum(1 for r in backlog if seen[r].received_ms > last_urgent_ms)
    print(f"{waiting} backlog events waiting when the urgent ones came, {overtaken} overtaken")
    assert overtaken >= waiting // 2, (overtaken, waiting)
    assert sandbox.accepted_count() >= BACKLOG + URGENT
    return latencies_ms(sandbox, high, urgent), paths(sandbox, urgent), metrics


def test_urgent_records_take_the_single_record_endpoint_ahead_of_the_backlog(
    scenario: ScenarioFactory,
) -> None:
    latencies, taken, metrics = urgent_behind_a_backlog(scenario)
    print(f"realtime on: p50 {latencies[len(latencies) // 2]} ms, slowest {latencies[-1]} ms")
    assert taken == {"realtime": URGENT}
    assert metrics['dcr_path_records_delivered_total{path="realtime"}'] == URGENT
    assert metrics['dcr_path_records_delivered_total{path="batch"}'] == BACKLOG
    # v2 reconciles batch statuses; a realtime record's receipt says it is final ("single").
    unreconciled = [v for k, v in metrics.items() if "no_batch_id" in k]
    assert "dcr_reconcile_lag_seconds" in metrics
    assert sum(unreconciled) == 0, unreconciled


def test_with_the_lane_off_high_priority_batches_overtake_the_backlog(
    scenario: ScenarioFactory,
) -> None:
    latencies, taken, metrics = urgent_behind_a_backlog(scenario, realtime="off")
    print(f"realtime off: p50 {latencies[len(latencies) // 2]} ms, slowest {latencies[-1]} ms")
    assert taken == {"batch": URGENT}
    assert total(metrics, "dcr_path_records_delivered_total") == BACKLOG + URGENT


def test_records_about_to_start_are_urgent_and_those_already_open_are_not(
    scenario: ScenarioFactory,
) -> None:
    run = scenario(PARTITIONS, documented=True)
    opened, soon = set(), set()
    for _ in range(URGENT):  # no priority field: only their windows tell them apart
        now_ms = time.time_ns() // 1_000_000
        opened |= run.produce(100, now_ms=now_ms - MINUTE_MS)
        soon |= run.produce(1, now_ms=now_ms + MINUTE_MS // 2)
    service = run.service()
    wait_until(run.delivered(), timeout_s=DEADLINE_S, what="every event")
    run.wait_committed(timeout_s=DEADLINE_S)
    metrics = service.metrics()
    assert paths(run.sandbox, soon) == {"realtime": URGENT}
    assert paths(run.sandbox, opened) == {"batch": len(opened)}
    assert metrics['dcr_path_records_delivered_total{path="realtime"}'] == URGENT


def test_5000_urgent_records_at_once_overflow_to_batches_without_429s(
    scenario: ScenarioFactory,
) -> None:
    two = TOKENS[:2]
    run = scenario(PARTITIONS, documented=True, static_tokens=two)
    sandbox = run.sandbox
    service = run.service(api_token=",".join(two))
    wait_until(service.joined, timeout_s=60, what="the service to join")
    urgent = run.produce(5_000, fields={"priority": "high"})
    wait_until(run.delivered(urgent), timeout_s=DEADLINE_S, what="the 5000 urgent events")
    run.wait_committed(timeout_s=DEADLINE_S)
    stats = sandbox.run(sandbox.sandbox.stats).accounts[ACCOUNT]
    metrics = service.metrics()
    taken = paths(sandbox, urgent)
    realtime_requests = sum(stats.realtime_requests.values())
    share_429 = stats.realtime_requests.get("429", 0) / realtime_requests
    overflow = total(metrics, "dcr_realtime_overflow_total")
    print(f"5000 urgent: paths {dict(taken)}, 429 share {share_429:.2%}, overflow {overflow:.0f}")
    assert sum(taken.values()) == 5_000
    assert share_429 <= 0.01, stats
    assert stats.throttled == 0, stats
    assert taken["batch"] > 0
    assert taken["realtime"] > 0
    assert overflow == taken["batch"]
    assert max(use.realtime_peak for use in stats.token_use.values()) <= 101
