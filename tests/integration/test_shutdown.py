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
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.sandbox import SandboxConfig
from tests.conftest import Broker
from tests.integration.conftest import (
    TOKEN,
    SandboxThread,
    Service,
    all_committed,
    committed_and_end,
    produce_events,
    wait_for,
)
from tests.integration.test_operations import port_of, scrape, total

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHUTDOWN_S = 8
"""The chart value this test renders; small, so that a stop that uses all of it is quick."""

_LEFT = re.compile(r"(\d+) records consumed and not committed")


def chart_budget() -> tuple[float, int]:
    """(DCR_SHUTDOWN_TIMEOUT_S, terminationGracePeriodSeconds) as the chart renders them."""
    helm = subprocess.run(
        ["bash", str(REPO / "scripts" / "helm.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    rendered = subprocess.run(
        [
            helm,
            "template",
            "rel",
            str(REPO / "helm" / "dcr-stream"),
            "--values",
            str(REPO / "tests" / "chart" / "values" / "minimal.yaml"),
            "--set",
            f"shutdownTimeoutSeconds={SHUTDOWN_S}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(rendered) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    settings = next(
        d for d in docs if d["kind"] == "ConfigMap" and "DCR_SHUTDOWN_TIMEOUT_S" in d["data"]
    )
    grace: int = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    return float(settings["data"]["DCR_SHUTDOWN_TIMEOUT_S"]), grace


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


def http_port(service: Service) -> int:
    wait_for(lambda: any("on port" in e["message"] for e in service.lines()), what="http")
    return port_of(service)


def stop_timed(service: Service, budget_s: float) -> float:
    started = time.monotonic()
    service.signal(signal.SIGTERM)
    assert service.wait(budget_s + 10) == 0
    return time.monotonic() - started


def uncommitted(kafka: Broker, group: str, topic: str, partitions: int, of: set[int]) -> int:
    committed, ends = committed_and_end(kafka, group, topic, partitions)
    return sum(ends[p] - max(committed[p], 0) for p in of)


def test_sigterm_while_the_api_hangs_exits_0_within_the_budget(
    kafka: Broker,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
    sandbox_thread: Callable[..., SandboxThread],
    service_factory: Callable[..., Service],
) -> None:
    budget_s, grace_s = chart_budget()
    assert budget_s == SHUTDOWN_S
    assert budget_s < grace_s
    topic, group = topic_factory(partitions=2), group_factory()
    sandbox = sandbox_thread()
    sandbox.run(lambda: sandbox.sandbox.set_faults(latency_ms=600_000))
    produce_events(kafka, topic, 2_000)
    service = service_factory(sandbox.url, topic, group, shutdown_timeout_s=str(budget_s))
    port = http_port(service)
    wait_for(lambda: total(scrape(port), "dcr_events_consumed_total") == 2_000, what="consumed")

    elapsed = stop_timed(service, budget_s)

    print(f"API hangs: stopped in {elapsed:.2f} s of {budget_s} s, left {left_behind(service)}")
    assert elapsed <= budget_s, f"the stop took {elapsed:.1f} s of a {budget_s} s budget"
    assert left_behind(service) == 2_000
    assert uncommitted(kafka, group, topic, 2, {0, 1}) == 2_000


def test_sigterm_while_three_replicas_contend_for_the_quota(
    request: pytest.FixtureRequest,
    kafka: Broker,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
    service_factory: Callable[..., Service],
) -> None:
    budget_s, _ = chart_budget()
    partitions = 6
    topic, group = topic_factory(partitions=partitions), group_factory()
    # Each account's quota (2 requests/s) for three replicas that each believe it is theirs: a
    # replica drains its 10,000 records in about 15 s, far more than its drain budget.
    sandbox = SandboxThread(SandboxConfig(static_token=TOKEN, rate_limit_rps=2))
    request.addfinalizer(sandbox.stop)
    settings = {
        "rate_limit_rps": "2",
        "shutdown_timeout_s": str(budget_s),
        "max_buffered_records": "50000",
    }
    replicas = [service_factory(sandbox.url, topic, group, **settings) for _ in range(3)]
    ports = [http_port(r) for r in replicas]
    # Produce only once the group is settled, so that no record is consumed by two owners.
    wait_for(
        lambda: [total(scrape(p), "dcr_assigned_partitions") for p in ports] == [2, 2, 2],
        what="two partitions each",
    )
    produced = produce_events(kafka, topic, 30_000)
    wait_for(
        lambda: sum(total(scrape(p), "dcr_events_consumed_total") for p in ports) == 30_000,
        what="every event consumed",
    )
    leaving = replicas[0]
    mine = owned(leaving, topic)
    assert len(mine) == 2

    elapsed = stop_timed(leaving, budget_s)

    left = left_behind(leaving)
    print(f"three replicas: stopped in {elapsed:.2f} s of {budget_s} s, left {left}")
    # Read at once: the new owners queue these records behind their own backlog.
    assert left == uncommitted(kafka, group, topic, partitions, mine)
    assert left > 0, "the replica drained everything: the quota did not contend"
    assert elapsed <= budget_s, f"the stop took {elapsed:.1f} s of a {budget_s} s budget"
    wait_for(lambda: set(sandbox.accepted_receivers()) >= produced.valid, what="deliveries")
    wait_for(all_committed(kafka, group, topic, partitions), what="commits")
    for replica in replicas[1:]:
        assert stop_timed(replica, budget_s) <= budget_s
