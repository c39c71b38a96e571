"""SIGTERM within the shutdown budget (docs/design.md#shutdown), timed against the Helm chart.

The budget the service gets is the one the chart renders (``DCR_SHUTDOWN_TIMEOUT_S``), which must
stay below the pod's ``terminationGracePeriodSeconds``. A stop that cannot drain everything (an API
that hangs, a quota shared by three replicas) still exits 0 inside the budget, and its last log
line counts the records it leaves to the next owner: the records of its partitions past the offsets
it committed, read back from Kafka.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.support.helm import Helm, config, only
from tests.support.kafka import Offsets
from tests.support.scenario import ScenarioFactory
from tests.support.service import Service, total
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

MINIMAL = Path(__file__).resolve().parents[1] / "chart" / "values" / "minimal.yaml"
SHUTDOWN_S = 8
"""The chart value this test renders; small, so that a stop that uses all of it is quick."""
DEADLINE_S = 120.0

_LEFT = re.compile(r"(\d+) records consumed and not committed")


def chart_budget(helm: Helm) -> float:
    """``DCR_SHUTDOWN_TIMEOUT_S`` as the chart renders it, checked against the pod's grace."""
    manifests = helm.render([MINIMAL], [f"shutdownTimeoutSeconds={SHUTDOWN_S}"])
    budget_s = float(config(manifests)["DCR_SHUTDOWN_TIMEOUT_S"])
    grace_s = only(manifests, "Deployment")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert budget_s == SHUTDOWN_S
    assert budget_s < grace_s
    return budget_s


def left_behind(service: Service) -> int:
    """The count in the service's last log line."""
    last = service.lines()[-1]["message"]
    if "every consumed record was finished and committed" in last:
        return 0
    found = _LEFT.search(last)
    assert found, f"the last log line does not count what is left: {last!r}"
    return int(found.group(1))


def owned(service: Service, topic: str) -> set[int]:
    """The partitions the service owned last, from its log (assigned, then revoked or lost)."""
    partitions: set[int] = set()
    for entry in service.lines():
        message = entry["message"]
        numbers = {int(p) for p in re.findall(rf"{re.escape(topic)}\[(\d+)\]", message)}
        if message.startswith("assigned"):
            partitions |= numbers
        elif message.startswith(("revoking", "lost")):
            partitions -= numbers
    return partitions


def stop_timed(service: Service, budget_s: float) -> float:
    started = time.monotonic()
    service.signal(signal.SIGTERM)
    assert service.wait(budget_s + 10) == 0
    return time.monotonic() - started


def uncommitted(offsets: Offsets, of: set[int]) -> int:
    committed, ends = offsets.committed(), offsets.ends()
    return sum(ends[p] - max(committed[p], 0) for p in of)


def consumed(service: Service) -> float:
    return total(service.metrics(), "dcr_events_consumed_total")


def test_sigterm_while_the_api_hangs_exits_0_within_the_budget(
    helm: Helm, scenario: ScenarioFactory
) -> None:
    budget_s = chart_budget(helm)
    run = scenario(partitions=2)
    run.sandbox.set_faults(latency_ms=600_000)
    run.produce(2_000)
    service = run.service(shutdown_timeout_s=str(budget_s))
    wait_until(lambda: consumed(service) == 2_000, timeout_s=DEADLINE_S, what="consumed")

    elapsed = stop_timed(service, budget_s)

    print(f"API hangs: stopped in {elapsed:.2f} s of {budget_s} s, left {left_behind(service)}")
    assert elapsed <= budget_s, f"the stop took {elapsed:.1f} s of a {budget_s} s budget"
    assert left_behind(service) == 2_000
    with run.offsets() as offsets:
        assert uncommitted(offsets, {0, 1}) == 2_000


def test_sigterm_while_three_replicas_contend_for_the_quota(
    helm: Helm, scenario: ScenarioFactory
) -> None:
    budget_s = chart_budget(helm)
    # Each account's quota (2 requests/s) for three replicas that each believe it is theirs: a
    # replica drains its 10,000 records in about 15 s, far more than its drain budget.
    run = scenario(partitions=6, rate_limit_rps=2)
    settings = {
        "rate_limit_rps": "2",
        "shutdown_timeout_s": str(budget_s),
        "max_buffered_records": "50000",
    }
    replicas = [run.service(**settings) for _ in range(3)]
    # Produce only once the group is settled, so that no record is consumed by two owners.
    wait_until(
        lambda: [total(r.metrics(), "dcr_assigned_partitions") for r in replicas] == [2, 2, 2],
        timeout_s=DEADLINE_S,
        what="two partitions each",
    )
    run.produce(30_000)
    wait_until(
        lambda: sum(consumed(r) for r in replicas) == 30_000,
        timeout_s=DEADLINE_S,
        what="every event consumed",
    )
    leaving = replicas[0]
    mine = owned(leaving, run.topic)
    assert len(mine) == 2

    elapsed = stop_timed(leaving, budget_s)

    left = left_behind(leaving)
    print(f"three replicas: stopped in {elapsed:.2f} s of {budget_s} s, left {left}")
    with run.offsets() as offsets:
        # Read at once: the new owners queue these records behind their own backlog.
        assert left == uncommitted(offsets, mine)
    assert left > 0, "the replica drained everything: the quota did not contend"
    assert elapsed <= budget_s, f"the stop took {elapsed:.1f} s of a {budget_s} s budget"
    wait_until(run.delivered(), timeout_s=DEADLINE_S, what="deliveries")
    run.wait_committed(timeout_s=DEADLINE_S)
    for replica in replicas[1:]:
        assert stop_timed(replica, budget_s) <= budget_s
