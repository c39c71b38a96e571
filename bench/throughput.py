"""B1: throughput against the Kafka read limit.

One topic of valid events over 8 partitions is read, in alternation, by (a) a bare confluent-kafka
consume loop (``bench.bare_consume``: the limit) and (b) ``dcr-stream run`` sending to
``bench.sink`` with the quota out of the way; each run joins a fresh group and reads it all from the
start. (a) is timed from spawn to exit; (b) from spawn until the group's committed positions reach
the end offsets, which is when every record was accepted by the sink and committed. Both are charged
the CPU their process used by then. The headline is the ratio of (b)'s rate to (a)'s, per adjacent
pair, median over pairs.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import (
    ACCOUNT,
    PARTITIONS,
    WAIT_S,
    committed,
    cpu_s,
    end,
    fill,
    median,
    service,
    sink,
    topic,
)
from tests.support.events import LABEL
from tests.support.kafka import Broker, Offsets, delete_topics, unique
from tests.support.service import Child, Service, total
from tests.support.waiting import wait_until

QUOTA_OFF_RPS = "1000000"
"""``DCR_RATE_LIMIT_RPS`` and ``DCR_TOKEN_REQUESTS_PER_MINUTE`` for B1: requests are never held
back by the quota (the sink has none; one static token shared by ten slots would otherwise be
paced at 60 requests a minute)."""

LABELS = f"{ACCOUNT}:{LABEL}"
"""``DCR_ALLOWED_LABEL_IDS`` for B1: the sink has no label registry (it answers ``{}``), so without
an allow-list the label gate would hold the first records for a probe and a coalesced refresh
(``stream.labels.MISS_REFRESH_S``, 5 s): a fixed stall in every run that has nothing to do with
the pipeline's pace."""


def run(kafka: Broker, *, events: int, pairs: int, logs: Path) -> dict[str, Any]:
    name = topic(kafka, "b1")
    produce_s = fill(kafka, name, events)
    if (held := end(kafka, name)) != events:
        raise RuntimeError(f"B1: the topic holds {held} events, not {events}")
    bare: list[dict[str, float]] = []
    served: list[dict[str, float]] = []
    sink_child, url = sink(logs / "b1-sink.log")
    with sink_child:
        for i in range(pairs):
            bare.append(_bare(kafka, name, events, logs / f"b1-bare-{i}.log"))
            served.append(_service(kafka, name, events, url, logs / f"b1-service-{i}.log"))
            print(
                f"  B1 pair {i + 1}/{pairs}: bare {bare[-1]['records_per_s']:,.0f}/s, "
                f"service {served[-1]['records_per_s']:,.0f}/s "
                f"(ratio {served[-1]['records_per_s'] / bare[-1]['records_per_s']:.2f})",
                flush=True,
            )
    delete_topics(kafka.bootstrap_servers, [name])
    ratios = [s["records_per_s"] / b["records_per_s"] for b, s in zip(bare, served, strict=True)]
    return {
        "events": events,
        "partitions": 8,
        "produce_s": round(produce_s, 2),
        "pairs": pairs,
        "bare": _summary(bare),
        "service": _summary(served),
        "ratio": round(median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "bare_runs": bare,
        "service_runs": served,
    }


def _summary(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in runs[0] if isinstance(runs[0][k], int | float)]
    return {k: round(median([r[k] for r in runs]), 3) for k in keys}


def _bare(kafka: Broker, name: str, events: int, log: Path) -> dict[str, float]:
    child = Child(
        [sys.executable, "-m", "bench.bare_consume", kafka.bootstrap_servers, name,
         unique("bench-bare"), str(events)],
        log,
    )  # fmt: skip
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.monotonic() - child.started
    child.proc.returncode = os.waitstatus_to_exitcode(status)
    if child.proc.returncode != 0:
        raise RuntimeError(f"B1: the bare consume loop failed:\n{log.read_text()[-2000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return _figures(events, elapsed, cpu)


def _service(kafka: Broker, name: str, events: int, url: str, log: Path) -> dict[str, float]:
    started_wall = time.time()
    quota_off = {"rate_limit_rps": QUOTA_OFF_RPS, "token_requests_per_minute": QUOTA_OFF_RPS}
    with service(kafka, name, url, log, allowed_label_ids=LABELS, **quota_off) as child:
        group = child.settings["kafka_group_id"]
        with Offsets(kafka.bootstrap_servers, group, name, PARTITIONS) as offsets:
            done = wait_until(
                lambda: child.alive() and committed(offsets) >= events,
                timeout_s=WAIT_S,
                interval_s=0.1,
                what="B1 commits",
            )
        cpu = cpu_s(child.pid)
        metrics = child.metrics()
        figures = _figures(events, done - child.started, cpu)
        if total(metrics, "dcr_records_delivered_total") != events:
            raise RuntimeError(f"B1: the service delivered {metrics} , not {events}")
        figures["startup_s"] = round(_assigned_at(child) - started_wall, 3)
        figures["mean_batch"] = round(
            total(metrics, "dcr_batch_records_sum") / total(metrics, "dcr_batch_records_count"), 1
        )
        return figures


def _assigned_at(service: Service) -> float:
    """Wall time of the service's first ``assigned`` log line."""
    for entry in service.lines():
        if entry["message"].startswith("assigned"):
            return datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()
    return float("nan")


def _figures(events: int, elapsed_s: float, cpu: float) -> dict[str, float]:
    return {
        "seconds": round(elapsed_s, 3),
        "records_per_s": round(events / elapsed_s),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_million": round(cpu / events * 1e6, 2),
    }
