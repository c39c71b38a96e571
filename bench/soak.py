"""B7: a soak in compressed time, token generation after token generation (issue 24).

The sandbox with the documented per-token limit (60 requests a minute) but tokens that live 120 s
and 10 mints per 60 s (``--token-lifetime-s 120 --mint-window-s 60``), the service told the same
(``DCR_TOKEN_LIFETIME_S=120``, ``DCR_MINT_BUDGET=10``, ``DCR_MINT_WINDOW_S=60``; a pool of 10
minted tokens): an hour's token life and half an hour's mint window, thirty times faster. One
replica; a steady 90% of the quota, 4,500 records/s, produced at an even pace from a thread of this
process for ``seconds`` (at least five generations of 120 s for the full size).

About every ``LAG_EVERY_S`` the group's lag is sampled: the topic's end offsets less the group's
committed offsets; beside it the sandbox's count of accepted records and requests, the service's
CPU, the time its threads waited for a CPU (``schedstat``: this machine is shared), its RSS and the
reconciler's holdings, summed up per generation (``per_generation``). ``reconcile`` is the service's
``DCR_RECONCILE`` (``auto``, on for v2, by default; ``off`` tells its cost apart). The run is cut
into generations of one token lifetime from the start of the load; the lag is bounded if no
generation's highest lag after the first exceeds twice the first's plus a second of input
(``bounded``), i.e. it does not grow from generation to generation. The sandbox's log gives the time
of every mint: the most in any rolling 60 s must stay within 10 (and a mint over that would be
refused, ``mints_refused``). Token-limit 429s are the sandbox's count of batch requests refused for
their token's 60 a minute.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    PARTITIONS,
    WAIT_S,
    committed,
    cpu_s,
    fill,
    http_json,
    mint_times,
    most_in_window,
    run_queue_s,
    sandbox,
    service,
    topic,
)
from bench.quota import BATCH, DOCUMENTED, POOL, RPS
from tests.support.kafka import Broker, Offsets, delete_topics
from tests.support.service import Service, total
from tests.support.waiting import wait_until

LIFETIME_S = 120
MINT_WINDOW_S = 60
MINT_BUDGET = 10
LOAD = 0.9
RATE = LOAD * RPS * BATCH
"""Records a second: 90% of 10 tokens x 60 a minute x 500."""
LAG_EVERY_S = 5.0


def run(kafka: Broker, *, seconds: float, reconcile: str, logs: Path) -> dict[str, Any]:
    name = topic(kafka, "b7")
    sandbox_log = logs / "b7-sandbox.log"
    flags = (
        *DOCUMENTED,
        f"--token-lifetime-s={LIFETIME_S}",
        f"--mint-window-s={MINT_WINDOW_S}",
        f"--mint-limit={MINT_BUDGET}",
    )
    settings = {
        **POOL,
        "token_lifetime_s": str(LIFETIME_S),
        "mint_budget": str(MINT_BUDGET),
        "mint_window_s": str(MINT_WINDOW_S),
        "reconcile": reconcile,
    }
    count = int(RATE * seconds)
    sandbox_child, url = sandbox(sandbox_log, *flags)
    with sandbox_child, service(kafka, name, url, logs / "b7-service.log", **settings) as child:
        wait_until(child.joined, timeout_s=WAIT_S, what="the B7 service to join")
        group = child.settings["kafka_group_id"]
        feeder = _Feeder(kafka, name, count)
        lags: list[tuple[float, int]] = []
        samples: list[dict[str, float]] = []
        """Beside each lag: what the sandbox accepted, the service's CPU and what it holds, and the
        machine's load (a shared machine's), to tell a slow service from a starved one."""
        with Offsets(kafka.bootstrap_servers, group, name, PARTITIONS) as offsets:
            while feeder.running():
                child.alive()
                lags.append((time.monotonic() - feeder.started, _lag(offsets)))
                samples.append(_sample(child, url))
                if len(lags) % 12 == 0:
                    print(
                        f"  B7 {lags[-1][0]:.0f} s: lag {lags[-1][1]:,}, "
                        f"{feeder.produced():,} produced",
                        flush=True,
                    )
                time.sleep(LAG_EVERY_S)
            feeder.join()
            wait_until(
                lambda: child.alive() and committed(offsets) >= count,
                timeout_s=WAIT_S,
                interval_s=0.5,
                what="B7 to drain its last records",
            )
        metrics = child.metrics()
        stats = http_json(f"{url}/_sandbox/stats")["totals"]
    delete_topics(kafka.bootstrap_servers, [name])
    minted = mint_times(sandbox_log)
    mints = [t - minted[0] for t in minted]
    generations = _generations(lags, feeder.seconds)
    reference = generations[0]
    bounded = all(g <= 2 * reference + RATE for g in generations[1:])
    result = {
        "seconds": seconds,
        "reconcile": reconcile,
        "rate_per_s": RATE,
        "events": count,
        "produced_in_s": round(feeder.seconds, 1),
        "lag_every_s": LAG_EVERY_S,
        "lag_max_per_generation": generations,
        "lag_bounded": bounded,
        "lag_max": max(lag for _, lag in lags),
        "lag_median": sorted(lag for _, lag in lags)[len(lags) // 2],
        "throttled_token": stats.get("throttled_by", {}).get("token", 0),
        "throttled": stats["throttled"],
        "requests": sum(stats["requests"].values()),
        "records_accepted": stats["records_accepted"],
        "mints": stats["tokens"].get("200", 0),
        "mints_refused": stats["tokens"].get("429", 0),
        "mints_most_in_window": most_in_window(mints, MINT_WINDOW_S),
        "mint_times_s": [round(t, 1) for t in mints],
        "service_mints_held_back": total(metrics, "dcr_token_mints_held_back_total"),
        "service_retries": total(metrics, "dcr_api_retries_total"),
        "lags": [(round(t, 1), lag) for t, lag in lags],
        "per_generation": _per_generation(lags, samples, feeder.seconds),
        "samples": samples,
    }
    print(
        f"  B7 {seconds:.0f} s at {RATE:,.0f}/s: lag max per generation {generations} "
        f"(bounded: {bounded}), {result['throttled_token']} token-limit 429s, "
        f"{result['mints']} mints, at most {result['mints_most_in_window']} in "
        f"{MINT_WINDOW_S} s",
        flush=True,
    )
    return result


def _sample(child: Service, url: str) -> dict[str, float]:
    totals = http_json(f"{url}/_sandbox/stats")["totals"]
    metrics = child.metrics()
    return {
        "accepted": totals["records_accepted"],
        "requests": sum(totals["requests"].values()),
        "service_cpu_s": cpu_s(child.pid),
        "service_run_queue_s": run_queue_s(child.pid),
        "buffered": total(metrics, "dcr_buffered_records"),
        "paused": total(metrics, "dcr_paused_partitions"),
        "tokens_live": total(metrics, "dcr_tokens_live"),
        "status_requests": total(metrics, "dcr_status_requests_total"),
        "receipts_in_hand": total(metrics, "dcr_reconcile_receipts_in_hand"),
        "reconcile_lag_s": total(metrics, "dcr_reconcile_lag_seconds"),
        "rss_mib": round(child.rss_mib(), 1),
        "load_average": round(os.getloadavg()[0], 1),
    }


def _per_generation(
    lags: list[tuple[float, int]], samples: list[dict[str, float]], seconds: float
) -> list[dict[str, float]]:
    """Per token lifetime of the load: records the sandbox accepted a second, the service's share
    of a core, the reconciler's holdings at its end, the mean load average."""
    count = max(1, round(seconds / LIFETIME_S))
    spans: list[list[tuple[float, dict[str, float]]]] = [[] for _ in range(count)]
    for (t, _), sample in zip(lags, samples, strict=True):
        spans[min(int(t // LIFETIME_S), count - 1)].append((t, sample))
    found = []
    for span in spans:
        if len(span) < 2:
            continue
        (t0, first), (t1, last) = span[0], span[-1]
        found.append(
            {
                "accepted_per_s": round((last["accepted"] - first["accepted"]) / (t1 - t0)),
                "requests_per_s": round((last["requests"] - first["requests"]) / (t1 - t0), 2),
                "service_cpu": round(
                    (last["service_cpu_s"] - first["service_cpu_s"]) / (t1 - t0), 3
                ),
                "service_run_queue": round(
                    (last["service_run_queue_s"] - first["service_run_queue_s"]) / (t1 - t0), 3
                ),
                "receipts_in_hand": last["receipts_in_hand"],
                "reconcile_lag_s": last["reconcile_lag_s"],
                "rss_mib": last["rss_mib"],
                "load_average": round(sum(s["load_average"] for _, s in span) / len(span), 1),
            }
        )
    return found


def _lag(offsets: Offsets) -> int:
    return sum(offsets.ends()) - committed(offsets)


def _generations(lags: list[tuple[float, int]], seconds: float) -> list[int]:
    """The highest lag in each token lifetime of the load (a last part shorter than half a
    lifetime is left out)."""
    count = max(1, round(seconds / LIFETIME_S))
    highest = [0] * count
    for t, lag in lags:
        n = min(int(t // LIFETIME_S), count - 1)
        highest[n] = max(highest[n], lag)
    return highest


class _Feeder:
    """``fill`` at ``RATE`` on a thread: a steady load while the main thread samples."""

    def __init__(self, kafka: Broker, name: str, count: int) -> None:
        self.started = time.monotonic()
        self.seconds = 0.0
        self._count = count
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(kafka, name), daemon=True)
        self._thread.start()

    def _run(self, kafka: Broker, name: str) -> None:
        try:
            self.seconds = fill(kafka, name, self._count, rate=RATE, linger_ms=5)
        except BaseException as exc:  # re-raised on the main thread by join()
            self._error = exc

    def running(self) -> bool:
        return self._thread.is_alive()

    def produced(self) -> int:
        """About how many were produced so far (from the pace)."""
        return min(self._count, int((time.monotonic() - self.started) * RATE))

    def join(self) -> None:
        self._thread.join()
        if self._error is not None:
            raise self._error
