"""B3: latency from produce to the API at a steady trickle.

``dcr-stream run`` with ``DCR_BATCH_LINGER_MS=200`` joins its group on an empty topic; then events
are produced at 200 a second (``linger.ms`` 5) into the sandbox's default quota. Each event's
``starts_at`` is the wall clock when it was made, just before it went to the producer; the sandbox
notes the wall clock when each batch arrives (``Accepted.received_ms``). The latency of an event is
the difference: producer, broker, consumer, validation, the batch's linger, the quota, HTTP.

**Urgent records behind a full batch lane** (issue 16): the sandbox with the documented per-token
limits (60 batch requests a minute, 100 single records a second) and one static token, so the
account's batch lane sends one batch a second; ``500 * (seconds + 10)`` normal events fill it for
longer than the measure lasts, then urgent events are produced at 20 a second on a high-priority
topic for ``seconds``. Their latency, produce to acceptance, is measured as above, with the
real-time lane on (``urgent``: the single-record endpoint) and off (``urgent_batch``: high-priority
batches, which take the next slot).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from bench.harness import (
    ACCOUNT,
    WAIT_S,
    fill,
    http_json,
    http_lines,
    median,
    sandbox,
    service,
    topic,
)
from tests.support.events import LABEL
from tests.support.kafka import Broker, delete_topics
from tests.support.waiting import wait_until

RATE = 200
LINGER_MS = "200"
URGENT_RATE = 20
URGENT_START = 1_000_000
"""Urgent events are numbered from here: their receivers tell them from the backlog's."""


class _Receipt(msgspec.Struct):
    batch_id: str
    received_ms: int
    starts_at: int
    receiver: str = ""
    path: str = "batch"


_receipts = msgspec.json.Decoder(_Receipt)


def run(kafka: Broker, *, seconds: float, repeat: int, logs: Path) -> dict[str, Any]:
    runs = []
    # Latency, not the quota: one static token, no per-token limit (B2 measures the quota). The
    # account's labels are known: without them the label registry answers 404 and the first
    # records wait ~5 s for a probe and a coalesced refresh (stream.labels.MISS_REFRESH_S).
    flags = (
        "--rate-limit-rps", "10", "--token-rate-limit", "off", f"--labels={ACCOUNT}={LABEL}",
    )  # fmt: skip
    sandbox_child, url = sandbox(logs / "b3-sandbox.log", *flags)
    with sandbox_child:
        for i in range(repeat):
            http_json(f"{url}/_sandbox/reset", b"{}")
            runs.append(_trickle(kafka, seconds, url, logs / f"b3-service-{i}.log"))
            print(
                f"  B3 run {i + 1}/{repeat}: p50 {runs[-1]['p50_ms']:.0f} ms, "
                f"p99 {runs[-1]['p99_ms']:.0f} ms, max {runs[-1]['max_ms']:.0f} ms",
                flush=True,
            )
    urgent: dict[str, dict[str, Any]] = {}
    # The documented per-token limits: one static token sends a batch a second.
    sandbox_child, url = sandbox(logs / "b3-urgent-sandbox.log")
    with sandbox_child:
        for name, realtime in (("urgent", "on"), ("urgent_batch", "off")):
            urgent_runs: list[dict[str, Any]] = []
            for i in range(repeat):
                http_json(f"{url}/_sandbox/reset", b"{}")
                log = logs / f"b3-{name}-service-{i}.log"
                urgent_runs.append(_behind_a_backlog(kafka, seconds, url, log, realtime))
                print(
                    f"  B3 {name} run {i + 1}/{repeat}: p50 {urgent_runs[-1]['p50_ms']:.0f} ms, "
                    f"p99 {urgent_runs[-1]['p99_ms']:.0f} ms, "
                    f"max {urgent_runs[-1]['max_ms']:.0f} ms",
                    flush=True,
                )
            urgent[name] = {"realtime": realtime, **_medians(urgent_runs), "runs": urgent_runs}
    return {
        "rate_per_s": RATE,
        "seconds": seconds,
        "linger_ms": int(LINGER_MS),
        "repeat": repeat,
        **_medians(runs),
        "runs": runs,
        "urgent_rate_per_s": URGENT_RATE,
        **urgent,
    }


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    return {k: round(median([r[k] for r in runs]), 1) for k in keys}


def _behind_a_backlog(
    kafka: Broker, seconds: float, url: str, log: Path, realtime: str
) -> dict[str, Any]:
    normal, high = topic(kafka, "b3-backlog"), topic(kafka, "b3-urgent", partitions=1)
    backlog = int(500 * (seconds + 10))
    count = int(URGENT_RATE * seconds)
    settings = {
        "kafka_topics": f"{normal},{high}",
        "kafka_high_priority_topics": high,
        "token_requests_per_minute": "60",
        "batch_linger_ms": "1000",
        "realtime": realtime,
    }
    with service(kafka, normal, url, log, **settings) as child:
        wait_until(child.joined, timeout_s=WAIT_S, interval_s=0.05, what="the B3 service to join")
        fill(kafka, normal, backlog)
        wait_until(
            lambda: http_json(f"{url}/_sandbox/stats")["totals"]["records_accepted"] >= 1000,
            timeout_s=WAIT_S,
            interval_s=0.2,
            what="the B3 backlog under way",
        )
        fill(kafka, high, count, rate=URGENT_RATE, linger_ms=5, start=URGENT_START)
        wait_until(
            lambda: (
                http_json(f"{url}/_sandbox/stats")["totals"]["records_accepted"] >= backlog + count
            ),
            timeout_s=WAIT_S,
            interval_s=0.2,
            what="B3 backlog and urgent records at the sandbox",
        )
    delete_topics(kafka.bootstrap_servers, [normal, high])
    latencies, paths = [], set()
    for line in http_lines(f"{url}/_sandbox/accepted"):
        receipt = _receipts.decode(line)
        if int(receipt.receiver[4:]) >= URGENT_START:
            latencies.append(receipt.received_ms - receipt.starts_at)
            paths.add(receipt.path)
    latencies.sort()
    return {
        "events": len(latencies),
        "backlog": backlog,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": latencies[-1],
        "paths": "+".join(sorted(paths)),
    }


def _trickle(kafka: Broker, seconds: float, url: str, log: Path) -> dict[str, float]:
    name = topic(kafka, "b3")
    events = int(RATE * seconds)
    unpaced = {"token_requests_per_minute": "1000000"}  # the sandbox here has no per-token limit
    with service(kafka, name, url, log, batch_linger_ms=LINGER_MS, **unpaced) as child:
        wait_until(child.joined, timeout_s=WAIT_S, interval_s=0.05, what="the B3 service to join")
        fill(kafka, name, events, rate=RATE, linger_ms=5)
        wait_until(
            lambda: http_json(f"{url}/_sandbox/stats")["totals"]["records_accepted"] >= events,
            timeout_s=WAIT_S,
            interval_s=0.2,
            what="B3 records at the sandbox",
        )
    delete_topics(kafka.bootstrap_servers, [name])
    latencies = []
    batches = set()
    for line in http_lines(f"{url}/_sandbox/accepted"):
        receipt = _receipts.decode(line)
        latencies.append(receipt.received_ms - receipt.starts_at)
        batches.add(receipt.batch_id)
    latencies.sort()
    return {
        "events": len(latencies),
        "p50_ms": _percentile(latencies, 0.50),
        "p90_ms": _percentile(latencies, 0.90),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": latencies[-1],
        "mean_batch": round(len(latencies) / len(batches), 1),
    }


def _percentile(ordered: list[int], q: float) -> float:
    """Nearest-rank percentile of an ordered list."""
    return float(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))])
