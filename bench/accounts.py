"""B6: many accounts in one replica (issue 24).

One ``dcr-stream run`` with a credentials file (``DCR_API_CREDENTIALS_FILE``: each account id, a
UUID, to a key pair of its own) for 1,000 quiet accounts and one busy one, against the sandbox with
the documented limits (60 requests a minute per token, 10 mints per 30 minutes per account) that
lists each account's label and takes each account's key pair only. The backlog: 100 events for each
quiet account and, for the busy one (``ACCOUNT``), enough for about 60 s at its full quota (10
tokens x 60 a minute x 500 records = 5,000 records/s: 300,000 events); the busy account's events are
spread evenly through the topic, the quiet accounts' between them in turn, so every account trickles
in for the whole run, as tenants of a shared deployment do.

Reported, once the group's commits reach the end:

- whether every event was accepted (each receiver once at least), and how many twice;
- mints per quiet account, max and mean (the sandbox's count per account; target at most 2);
- label list reads per account, max (the sandbox's count of labels requests; target at most 3);
- the service's peak resident set (``VmHWM``, B4's ``Sampler``; target at most 400 MiB);
- the busy account's rate: B2's drain (first accepted batch to last, plus one slot) of its own
  batches, as a share of its quota (target at least 95%);
- the series ``/metrics`` serves at the end (its sample lines).

The whole run is done twice: with ``DCR_METRICS_PER_ACCOUNT=on`` (the default) and ``off``. The
sandbox reads the same credentials file (``--credentials-file``): each account's token endpoint
takes that account's key pair only, so a pair sent for the wrong account is refused (401, counted
in ``mints_unauthorized``).
"""

from __future__ import annotations

import json
import math
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench.harness import (
    ACCOUNT,
    PARTITIONS,
    WAIT_S,
    Sampler,
    committed,
    cpu_s,
    deliveries,
    fill,
    http_json,
    receipts,
    run_queue_s,
    sandbox,
    service,
    topic,
)
from bench.quota import BATCH, RPS, batch_times_ms
from tests.support.events import LABEL
from tests.support.kafka import Broker, Offsets, delete_topics
from tests.support.service import get_text, total
from tests.support.waiting import wait_until

PER_QUIET = 100
KIB_PER_MIB = 1024


def quiet_accounts(count: int) -> list[str]:
    """The quiet accounts' ids, the same every run."""
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"dcr-stream/bench/B6/{n}")) for n in range(count)]


class Mix:
    """Which account event ``i`` of ``quiet x PER_QUIET + busy`` belongs to: the busy account's
    events evenly spread, the quiet accounts' in turn between them."""

    def __init__(self, quiet: list[str], busy: int) -> None:
        self.quiet = quiet
        self.busy = busy
        self.events = len(quiet) * PER_QUIET + busy

    def _busy_before(self, i: int) -> int:
        return i * self.busy // self.events

    def __call__(self, i: int) -> str:
        before = self._busy_before(i)
        if self._busy_before(i + 1) > before:
            return ACCOUNT
        return self.quiet[(i - before) % len(self.quiet)]


def run(kafka: Broker, *, accounts: int, busy_seconds: float, logs: Path) -> dict[str, Any]:
    mix = Mix(quiet_accounts(accounts), int(busy_seconds * RPS * BATCH))
    name = topic(kafka, "b6")
    fill(kafka, name, mix.events, account_of=mix)
    flags = [f"--labels={account}={LABEL}" for account in (*mix.quiet, ACCOUNT)]
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-b6-") as secrets:
        credentials = Path(secrets) / "credentials.json"
        credentials.write_text(
            json.dumps(
                {
                    account: {"key_id": f"key-{n}", "api_key": f"api-key-{n}-{uuid.uuid4().hex}"}
                    for n, account in enumerate((*mix.quiet, ACCOUNT))
                }
            )
        )
        sandbox_child, url = sandbox(
            logs / "b6-sandbox.log", *flags, f"--credentials-file={credentials}"
        )
        with sandbox_child:
            for per_account in ("on", "off"):
                http_json(f"{url}/_sandbox/reset", b"{}")
                sandbox_cpu = cpu_s(sandbox_child.pid)
                runs[per_account] = _drain(
                    kafka, name, mix, url, credentials, per_account,
                    logs / f"b6-service-{per_account}.log",
                )  # fmt: skip
                # The sandbox answers every request from one event loop: a core at most.
                runs[per_account]["sandbox_cpu_s"] = round(
                    cpu_s(sandbox_child.pid) - sandbox_cpu, 1
                )
                r = runs[per_account]
                print(
                    f"  B6 per-account metrics {per_account}: every event delivered: "
                    f"{r['all_delivered']}, mints per quiet account max {r['quiet_mints_max']} "
                    f"(mean {r['quiet_mints_mean']}), label reads max {r['label_reads_max']}, "
                    f"peak RSS {r['peak_rss_mib']} MiB, busy account at {r['busy_share']:.1%} of "
                    f"its quota, {r['series']} series",
                    flush=True,
                )
    delete_topics(kafka.bootstrap_servers, [name])
    return {
        "quiet_accounts": accounts,
        "events_per_quiet_account": PER_QUIET,
        "busy_events": mix.busy,
        "events": mix.events,
        **runs["on"],
        "series_per_account_off": runs["off"]["series"],
        "metrics_per_account_off": runs["off"],
    }


def _drain(
    kafka: Broker,
    name: str,
    mix: Mix,
    url: str,
    credentials: Path,
    per_account: str,
    log: Path,
) -> dict[str, Any]:
    settings = {
        "api_token": "",
        "api_credentials_file": str(credentials),
        "api_version": "v2",
        "metrics_per_account": per_account,
        # A receipts topic of its own: the other run's receipts would be reconciled too (the
        # reconciler's group starts at the earliest receipt), its statuses fetched at once.
        "receipts_topic": f"{name}.receipts.{per_account}",
    }
    with service(kafka, name, url, log, **settings) as child:
        sampler = Sampler(child.pid)
        group = child.settings["kafka_group_id"]
        with Offsets(kafka.bootstrap_servers, group, name, PARTITIONS) as offsets:
            done = wait_until(
                lambda: child.alive() and committed(offsets) >= mix.events,
                timeout_s=WAIT_S,
                interval_s=0.5,
                what="B6 commits",
            )
        exposition = get_text(child.http_port(), "/metrics")
        metrics = child.metrics()
        cpu, waited = cpu_s(child.pid), run_queue_s(child.pid)
        sampler.stop()
    stats = http_json(f"{url}/_sandbox/stats")["accounts"]
    quiet = [stats.get(account, {}) for account in mix.quiet]
    quiet_mints = [s.get("tokens", {}).get("200", 0) for s in quiet]
    label_reads = {a: sum(s.get("labels", {}).values()) for a, s in stats.items()}
    counts, _ = deliveries(receipts(url))
    busy_times = batch_times_ms(url, ACCOUNT)
    busy_drain_s = (busy_times[-1] - busy_times[0]) / 1000 + 1 / RPS
    busy_minimum_s = math.ceil(mix.busy / BATCH) / RPS
    busy_stats = stats.get(ACCOUNT, {})
    return {
        "all_delivered": len(counts) == mix.events,
        "delivered": len(counts),
        "delivered_twice": sum(c - 1 for c in counts.values()),
        "end_to_end_s": round(done - child.started, 2),
        "quiet_mints_max": max(quiet_mints),
        "quiet_mints_mean": round(sum(quiet_mints) / len(quiet_mints), 3),
        "busy_mints": busy_stats.get("tokens", {}).get("200", 0),
        "mints_refused": sum(s.get("tokens", {}).get("429", 0) for s in stats.values()),
        "mints_unauthorized": sum(s.get("tokens", {}).get("401", 0) for s in stats.values()),
        "label_reads_max": max(label_reads.values(), default=0),
        "label_reads_mean": round(sum(label_reads.values()) / max(1, len(label_reads)), 3),
        "quiet_requests_mean": round(
            sum(sum(s.get("requests", {}).values()) for s in quiet) / len(quiet), 2
        ),
        "peak_rss_mib": round(max(sampler.hwm_kib, sampler.peak_rss_kib) / KIB_PER_MIB, 1),
        "busy_drain_s": round(busy_drain_s, 3),
        "busy_minimum_s": busy_minimum_s,
        "busy_share": round(busy_minimum_s / busy_drain_s, 4),
        "busy_batches_every_5_s": _every(busy_times, 5000),
        "busy_throttled": busy_stats.get("throttled", 0),
        "throttled": sum(s.get("throttled", 0) for s in stats.values()),
        "status_requests": sum(sum(s.get("statuses", {}).values()) for s in stats.values()),
        "series": sum(1 for line in exposition.splitlines() if line and line[0] != "#"),
        "service_cpu_s": round(cpu, 1),
        # Seconds its threads waited, runnable, for a CPU: on a shared machine, how starved.
        "service_run_queue_s": round(waited, 1),
        "service_retries": total(metrics, "dcr_api_retries_total"),
        # Token sharing's claims by outcome: a late grant is a bucket lost to a slow loop.
        "claims": {
            k.split('"')[1]: int(v)
            for k, v in metrics.items()
            if k.startswith("dcr_token_claims_total{")
        },
    }


def _every(times_ms: list[float], span_ms: float) -> list[int]:
    """How many of ``times_ms`` (sorted) fall in each ``span_ms`` from the first."""
    counts = [0] * (int((times_ms[-1] - times_ms[0]) // span_ms) + 1)
    for t in times_ms:
        counts[int((t - times_ms[0]) // span_ms)] += 1
    return counts
