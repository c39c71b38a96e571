"""B2: how much of the API's quota a backlog gets, on the documented per-token limits.

A backlog of valid events for one account is drained by ``dcr-stream run`` (v2, tokens minted from
a key pair: a pool of 10) into the sandbox (``dcr-stream sandbox``, real HTTP, its own process)
with the API's documented limits: 60 requests a minute per token (429 beyond, in any rolling
minute), 10 mints per 30 minutes per account, no per-account quota. The quota is then 10 tokens x
60 a minute = 10 requests/s, and the theoretical minimum one full batch per slot:
``ceil(events / 500) / 10`` seconds.

``token_peak`` is the most requests the sandbox saw on one token in any rolling minute, 429s
included: above 60 a token broke its limit. ``mints`` counts the tokens the service minted.

The drain time is what the quota was in use for: from the sandbox's receipt of the first accepted
batch to that of the last, plus the last one's own slot (1/rps), so that a perfect client scores
exactly the minimum. The time from spawning the service until its commits reach the end of the
topic is reported beside it (it adds start-up, group join and the last commit interval).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import msgspec

from bench.harness import (
    ACCOUNT,
    PARTITIONS,
    WAIT_S,
    committed,
    fill,
    http_json,
    http_lines,
    median,
    sandbox,
    service,
    topic,
)
from tests.support.events import LABEL
from tests.support.kafka import Broker, Offsets, delete_topics
from tests.support.service import total
from tests.support.waiting import wait_until

RPS = 10
"""The pool's documented rate: 10 tokens x 60 requests a minute."""
BATCH = 500
KEY_ID, API_KEY = "bench-key", "bench-api-key"
DOCUMENTED = (
    "--token-rate-limit", "60", "--key-id", KEY_ID, "--api-key", API_KEY,
    # The account's labels are known, so the service's label registry reads them at once.
    f"--labels={ACCOUNT}={LABEL}",
)  # fmt: skip
"""The sandbox's flags for the API's documented limits."""
POOL = {
    "api_token": "",
    "api_key_id": KEY_ID,
    "api_key": API_KEY,
    "api_version": "v2",
    "token_pool_size": "10",
    "token_requests_per_minute": "60",
}
"""The service's settings for a pool of 10 tokens minted from the sandbox's key pair."""


class _Receipt(msgspec.Struct):
    batch_id: str
    received_monotonic_ms: float


_receipts = msgspec.json.Decoder(_Receipt)


def batch_times_ms(url: str, account: str | None = None) -> list[float]:
    """When the sandbox at ``url`` received each accepted batch (of ``account``; monotonic ms), in
    order."""
    first: dict[str, float] = {}
    query = "" if account is None else f"?account={account}"
    for line in http_lines(f"{url}/_sandbox/accepted{query}"):
        receipt = _receipts.decode(line)
        first.setdefault(receipt.batch_id, receipt.received_monotonic_ms)
    return sorted(first.values())


def run(kafka: Broker, *, events: int, repeat: int, logs: Path) -> dict[str, Any]:
    name = topic(kafka, "b2")
    fill(kafka, name, events)
    runs = []
    sandbox_child, url = sandbox(logs / "b2-sandbox.log", *DOCUMENTED)
    with sandbox_child:
        for i in range(repeat):
            http_json(f"{url}/_sandbox/reset", b"{}")
            runs.append(_drain(kafka, name, events, url, logs / f"b2-service-{i}.log", i))
            print(
                f"  B2 run {i + 1}/{repeat}: drained in {runs[-1]['drain_s']:.2f} s "
                f"(minimum {runs[-1]['minimum_s']:.1f} s), 429s {runs[-1]['share_429']:.2%}, "
                f"mean batch {runs[-1]['mean_batch']:.1f}",
                flush=True,
            )
    delete_topics(kafka.bootstrap_servers, [name])
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    return {
        "events": events,
        "rate_limit_rps": RPS,
        "repeat": repeat,
        **{k: round(median([r[k] for r in runs]), 4) for k in keys},
        "runs": runs,
    }


def _drain(
    kafka: Broker, name: str, events: int, url: str, log: Path, run: int
) -> dict[str, float]:
    # Each run reads the same topic but writes receipts of its own: the reconciler's group starts
    # at the earliest receipt, and would fetch the earlier runs' statuses at once, beside the drain.
    receipts = f"{name}.receipts.{run}"
    with service(kafka, name, url, log, **POOL, receipts_topic=receipts) as child:
        group = child.settings["kafka_group_id"]
        with Offsets(kafka.bootstrap_servers, group, name, PARTITIONS) as offsets:
            done = wait_until(
                lambda: child.alive() and committed(offsets) >= events,
                timeout_s=WAIT_S,
                interval_s=0.2,
                what="B2 commits",
            )
        end_to_end_s = done - child.started
        metrics = child.metrics()
    account_stats = next(iter(http_json(f"{url}/_sandbox/stats")["accounts"].values()))
    stats = http_json(f"{url}/_sandbox/stats")["totals"]
    times = batch_times_ms(url)
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    requests = sum(stats["requests"].values())
    accepted = stats["records_accepted"]
    drain_s = (times[-1] - times[0]) / 1000 + 1 / RPS
    minimum_s = math.ceil(events / BATCH) / RPS
    return {
        "drain_s": round(drain_s, 3),
        "minimum_s": minimum_s,
        "quota_used": round(minimum_s / drain_s, 4),
        "end_to_end_s": round(end_to_end_s, 3),
        "requests": requests,
        "throttled": stats["throttled"],
        "share_429": round(stats["throttled"] / requests, 5),
        "records_accepted": accepted,
        "mean_batch": round(accepted / len(times), 2),
        "gap_ms_p50": round(gaps[len(gaps) // 2], 1),
        "gap_ms_p99": round(gaps[int(len(gaps) * 0.99)], 1),
        "gap_ms_max": round(gaps[-1], 1),
        "token_peak": max(u["peak"] for u in account_stats["token_use"].values()),
        "tokens_used": len(account_stats["token_use"]),
        "mints": stats["tokens"].get("200", 0),
        "service_retries": total(metrics, "dcr_api_retries_total"),
    }
