"""B8: what a crash costs, with librdkafka's default session timeout (45 s).

A backlog for one account drains into the sandbox with the documented limits (as B2: a pool of 10
minted tokens, 10 requests a second); once 10,000 records are accepted the service is killed with
``kill -9`` and started again at once, as Kubernetes restarts a crashed container. The gap is from
the kill to the first batch the sandbox accepts afterwards; ``resumed_s`` is from the restart to
that batch. Measured with ``DCR_KAFKA_INSTANCE_ID`` (static membership: the restarted replica
takes its input partitions and token slots back at once) and without it (the dead member keeps them
until its session expires). docs/design.md#crash-recovery.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from bench.harness import WAIT_S, fill, http_json, sandbox, service, topic
from bench.quota import DOCUMENTED, POOL, batch_times_ms
from tests.support.kafka import Broker, delete_topics, unique
from tests.support.waiting import wait_until

EVENTS = 60_000
"""12 s of the pool's quota after the kill: the backlog outlasts the slower case's gap."""
KILL_AT = 10_000


def run(kafka: Broker, *, logs: Path) -> dict[str, Any]:
    sandbox_child, url = sandbox(logs / "b8-sandbox.log", *DOCUMENTED)
    with sandbox_child:
        cases = {
            name: _crash(kafka, url, logs / f"b8-{name}", instance_id)
            for name, instance_id in (("static", "replica-0"), ("dynamic", None))
        }
    for name, case in cases.items():
        print(f"  B8 {name}: deliveries stopped for {case['gap_s']:.2f} s", flush=True)
    return {"events": EVENTS, "kill_at": KILL_AT, **cases}


def _crash(kafka: Broker, url: str, log: Path, instance_id: str | None) -> dict[str, float]:
    http_json(f"{url}/_sandbox/reset", b"{}")
    name = topic(kafka, "b8")
    fill(kafka, name, EVENTS)
    settings = {**POOL, "kafka_group_id": unique("bench-group")}
    if instance_id is not None:
        settings["kafka_instance_id"] = instance_id

    def accepted() -> float:
        return float(http_json(f"{url}/_sandbox/stats")["totals"]["records_accepted"])

    first = service(kafka, name, url, log.with_suffix(".1.log"), **settings)
    with first:
        wait_until(lambda: accepted() >= KILL_AT, timeout_s=WAIT_S, what="B8 before the kill")
        first.signal(signal.SIGKILL)
        killed = time.monotonic()
        first.wait(10)
    restarted = time.monotonic()

    def first_after_restart() -> float | None:
        return next((t / 1000 for t in batch_times_ms(url) if t / 1000 > restarted), None)

    with service(kafka, name, url, log.with_suffix(".2.log"), **settings):
        wait_until(first_after_restart, timeout_s=WAIT_S, what="B8 deliveries after the restart")
        after = first_after_restart() or restarted
    delete_topics(kafka.bootstrap_servers, [name])
    return {
        "gap_s": round(after - killed, 2),
        "resumed_s": round(after - restarted, 2),
        "restart_s": round(restarted - killed, 2),
    }
