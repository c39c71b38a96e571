"""Static group membership (docs/design.md#crash-recovery) against the sandbox with the documented
limits, minted tokens and librdkafka's default session timeout (45 s, not shortened here):

- a replica killed with ``kill -9`` and restarted at once under the same ``DCR_KAFKA_INSTANCE_ID``
  delivers again within seconds, holding its input partitions and every token slot again;
- one of three replicas stopped for good (SIGTERM, a scale-down) has its input partitions and token
  slots working in the other two within seconds: its drain, then 6 s of session.
"""

from __future__ import annotations

import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from tests.support.sandbox import SandboxThread
from tests.support.scenario import MINTED, ScenarioFactory
from tests.support.service import Service
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

PARTITIONS = 6
SLOTS = set(range(10))
BOUND_S = 10.0
"""Acceptance: deliveries resume within 10 s of the restart; a stopped replica's work is done
elsewhere within 10 s of its SIGTERM."""
DEADLINE_S = 120.0


def static(instance_id: str) -> dict[str, str]:
    """Minted tokens, and no ``session.timeout.ms`` in the pass-through: the service's own
    choice holds."""
    return MINTED | {"kafka_instance_id": instance_id}


def partitions_held(service: Service, topic: str) -> set[int]:
    """The input partitions a service holds now, from its log."""
    held: set[int] = set()
    pattern = re.compile(rf"{re.escape(topic)}\[(\d+)\]")
    for line in service.lines():
        verb, _, rest = line["message"].partition(" ")
        if verb in ("assigned", "revoked", "lost"):
            named = {int(p) for p in pattern.findall(rest.split(";")[0])}
            held = held | named if verb == "assigned" else held - named
    return held


def ready(service: Service) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{service.http_port()}/readyz", timeout=5):
            return True
    except (urllib.error.URLError, OSError):
        return False


def first_batch_after(sandbox: SandboxThread, moment: float) -> Callable[[], float | None]:
    def find() -> float | None:
        return next((t for t in sandbox.batch_times() if t > moment), None)

    return find


def test_kill_9_and_an_immediate_restart_resume_within_seconds(scenario: ScenarioFactory) -> None:
    run = scenario(PARTITIONS, documented=True)
    sandbox = run.sandbox
    run.produce(40_000)
    service = run.service(**static("replica-0"))
    wait_until(lambda: sandbox.accepted_count() >= 10_000, timeout_s=DEADLINE_S, what="10,000")
    service.signal(signal.SIGKILL)
    service.wait(10)
    restarted = time.monotonic()
    service = run.service(**static("replica-0"))
    after = {
        "delivering": wait_until(first_batch_after(sandbox, restarted), timeout_s=DEADLINE_S),
        "slots": wait_until(lambda: service.token_slots() == SLOTS, timeout_s=DEADLINE_S),
        "partitions": wait_until(
            lambda: partitions_held(service, run.topic) == set(range(PARTITIONS)),
            timeout_s=DEADLINE_S,
        ),
        "ready": wait_until(lambda: ready(service), timeout_s=DEADLINE_S),
    }
    figures = {what: round(at - restarted, 2) for what, at in after.items()}
    print(f"kill -9 + restart under the same instance id, seconds after the restart: {figures}")
    wait_until(run.delivered(), timeout_s=DEADLINE_S, what="every event accepted")
    run.wait_committed(timeout_s=DEADLINE_S)
    assert max(figures.values()) <= BOUND_S, figures


def test_sigterm_of_one_of_three_hands_its_work_over_within_seconds(
    scenario: ScenarioFactory,
) -> None:
    run = scenario(PARTITIONS, documented=True)
    sandbox, topic = run.sandbox, run.topic
    replicas = [run.service(**static(f"replica-{i}")) for i in range(3)]
    wait_until(
        lambda: (
            sorted(len(r.token_slots()) for r in replicas) == [3, 3, 4]
            and sorted(len(partitions_held(r, topic)) for r in replicas) == [2, 2, 2]
        ),
        timeout_s=DEADLINE_S,
        what="three replicas sharing the slots and the partitions",
    )
    run.produce(40_000)
    # A scale-down comes when the backlog is low (KEDA scales on lag): the leaving replica's drain
    # is short, and most of the hand-over is the wait for its session to end.
    wait_until(lambda: sandbox.accepted_count() >= 30_000, timeout_s=DEADLINE_S, what="30,000")
    leaving, staying = replicas[0], replicas[1:]
    leaving.signal(signal.SIGTERM)
    stopped = time.monotonic()
    after = {
        "slots": wait_until(
            lambda: set().union(*(r.token_slots() for r in staying)) == SLOTS,
            timeout_s=DEADLINE_S,
        ),
        "partitions": wait_until(
            lambda: (
                set().union(*(partitions_held(r, topic) for r in staying)) == set(range(PARTITIONS))
            ),
            timeout_s=DEADLINE_S,
        ),
    }
    assert leaving.wait(DEADLINE_S) == 0
    exited = time.monotonic()
    figures = {what: round(at - stopped, 2) for what, at in after.items()}
    figures["exited"] = round(exited - stopped, 2)
    print(f"SIGTERM of one of three, seconds after the signal: {figures}")
    wait_until(run.delivered(), timeout_s=DEADLINE_S, what="every event accepted")
    run.wait_committed(timeout_s=DEADLINE_S)
    assert max(figures["slots"], figures["partitions"]) <= BOUND_S, figures
