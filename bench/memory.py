"""B4: memory while the API is down and a backlog waits.

Nothing listens at the API's address, so every request fails at once and is retried with backoff;
the service consumes until its bound (``DCR_MAX_BUFFERED_RECORDS``) and pauses its partitions. The
peak resident set of the process is the kernel's ``VmHWM``, read together with ``VmRSS`` samples
every 0.1 s for a fixed time. The baseline, in alternation, is the same service on an empty topic:
the ratio shows what the backlog costs over an idle process.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from bench.harness import WAIT_S, Sampler, fill, median, service, topic
from tests.support.kafka import Broker, delete_topics
from tests.support.service import total
from tests.support.waiting import wait_until

KIB_PER_MIB = 1024


def run(kafka: Broker, *, events: int, seconds: float, repeat: int, logs: Path) -> dict[str, Any]:
    backlog, empty = topic(kafka, "b4"), topic(kafka, "b4-empty")
    fill(kafka, backlog, events)
    dead = _dead_url()
    idle_runs, backlog_runs = [], []
    for i in range(repeat):
        idle_runs.append(_hold(kafka, empty, dead, seconds, logs / f"b4-idle-{i}.log"))
        backlog_runs.append(_hold(kafka, backlog, dead, seconds, logs / f"b4-backlog-{i}.log"))
        print(
            f"  B4 run {i + 1}/{repeat}: peak RSS {backlog_runs[-1]['peak_rss_mib']:.0f} MiB "
            f"with the backlog, {idle_runs[-1]['peak_rss_mib']:.0f} MiB idle",
            flush=True,
        )
    delete_topics(kafka.bootstrap_servers, [backlog, empty])
    peak = median([r["peak_rss_mib"] for r in backlog_runs])
    idle = median([r["peak_rss_mib"] for r in idle_runs])
    return {
        "events": events,
        "seconds": seconds,
        "repeat": repeat,
        "peak_rss_mib": round(peak, 1),
        "idle_peak_rss_mib": round(idle, 1),
        "ratio_to_idle": round(peak / idle, 2),
        "backlog_runs": backlog_runs,
        "idle_runs": idle_runs,
    }


def _dead_url() -> str:
    """A loopback address where nothing listens (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _hold(kafka: Broker, name: str, url: str, seconds: float, log: Path) -> dict[str, Any]:
    with service(kafka, name, url, log) as child:
        sampler = Sampler(child.pid)
        wait_until(child.joined, timeout_s=WAIT_S, interval_s=0.05, what="the B4 service to join")
        joined_at = sampler.samples[-1][0] if sampler.samples else 0.0
        wait_until(
            lambda: sampler.samples[-1][0] >= joined_at + seconds,
            timeout_s=WAIT_S,
            interval_s=0.5,
            what="B4 to run",
        )
        metrics = child.metrics()
        sampler.stop()
    peak_kib = max(sampler.hwm_kib, sampler.peak_rss_kib)
    return {
        "peak_rss_mib": round(peak_kib / KIB_PER_MIB, 1),
        "final_rss_mib": round(sampler.samples[-1][1] / KIB_PER_MIB, 1),
        "consumed": total(metrics, "dcr_events_consumed_total"),
        "buffered": total(metrics, "dcr_buffered_records"),
        "paused_partitions": total(metrics, "dcr_paused_partitions"),
        "rss_mib_every_s": [round(rss / KIB_PER_MIB, 1) for rss in _per_second(sampler.samples)],
    }


def _per_second(samples: list[tuple[float, int]]) -> list[int]:
    """The first sample of every second."""
    firsts: dict[int, int] = {}
    for t, rss in samples:
        firsts.setdefault(int(t), rss)
    return list(firsts.values())
