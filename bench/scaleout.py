"""B5: scale-out, replicas sharing one account's pool of tokens (issue 24).

One sandbox with the documented limits (B2's: 60 requests a minute per token, 10 mints per 30
minutes, one account, one key pair) and a skewed backlog: 70% of the events on two of eight
partitions (35% each on 0 and 1, 5% each on 2-7), as when a few keys are hot. Three cases:

- **together**: three replicas of ``dcr-stream run`` (``DCR_KAFKA_INSTANCE_ID`` set, as the chart
  sets it; a pool of 10 minted tokens) started together on the backlog;
- **scaling**: one replica, two more once a third of the events is accepted, those two stopped with
  SIGTERM at two thirds (once they own input partitions, if that is later); then every event must
  be accepted or dead-lettered and every partition committed to its end;
- **pool of two**: four replicas with ``DCR_TOKEN_POOL_SIZE=2``: are all four ready (``/readyz``),
  and does the account get its two tokens' rate?

The rate is B2's: the events accepted over the time the account had a backlog, from the
sandbox's receipt of the first accepted batch until every event had been accepted once (records
sent again later do not extend it) plus one slot (1/rps), as a share of the pool's documented rate
(tokens x 60 a minute x 500 records: 5,000 records/s for 10). A backlog not accepted in full by
its deadline counts until the deadline: the rate it got while it waited. The group's commits are
watched apart (``committed_to_end``): records can reach the API and still wait, uncommitted, in
a replica that cannot send. "Delivered twice" counts accepted records beyond the first of their
event (the sandbox's record, by receiver). ``token_peak`` is the most requests one token carried
in any rolling minute (429s included), ``mints`` the tokens minted. Every two seconds each
replica's ``/metrics`` and ``/readyz`` are sampled (partitions assigned, token slots held, records
buffered and delivered, ready or why not): the timeline shows which replica held tokens and which
had the backlog.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from bench.harness import (
    PARTITIONS,
    WAIT_S,
    Receipt,
    committed,
    dead_lettered,
    deliveries,
    fill,
    http_json,
    readiness,
    receipts,
    sandbox,
    service,
    topic,
)
from bench.quota import BATCH, DOCUMENTED, POOL
from tests.support.kafka import Broker, Offsets, delete_topics, unique
from tests.support.service import Service, scrape, total
from tests.support.waiting import TimedOut, wait_until

PER_TOKEN_RPS = 1
"""60 requests a minute."""
SAMPLE_S = 2.0
SCALING_BACKLOGS = 3
"""The scaling case drains three backlogs' worth (300,000 events, a minute at the full rate): a
replica takes seconds to start and join, 10 s and more on a loaded machine, and a third of one
backlog is accepted in 7 s."""
HOT = (0, 1)


def skewed(i: int) -> int:
    """Event ``i``'s partition: 7 of every 20 on partition 0, 7 on 1, one each on 2-7."""
    k = i % 20
    return HOT[0] if k < 7 else HOT[1] if k < 14 else k - 12


def run(kafka: Broker, *, events: int, pool2_events: int, logs: Path) -> dict[str, Any]:
    sandbox_child, url = sandbox(logs / "b5-sandbox.log", *DOCUMENTED)
    with sandbox_child:
        together = _together(kafka, url, events, logs)
        print(
            f"  B5 three replicas together: {together['rate_share']:.1%} of the documented rate, "
            f"{together['delivered_twice']} delivered twice, token peak "
            f"{together['token_peak']}, {together['mints']} mints",
            flush=True,
        )
        scaling = _scaling(kafka, url, SCALING_BACKLOGS * events, logs)
        print(
            f"  B5 1 -> 3 -> 1: {scaling['lost']} lost, {scaling['delivered_twice']} delivered "
            f"twice, {scaling['rate_share']:.1%} of the documented rate",
            flush=True,
        )
        pool2 = _pool_of_two(kafka, url, pool2_events, logs)
        print(
            f"  B5 four replicas, a pool of 2: {pool2['ready_at_end']} of 4 ready, "
            f"{pool2['rate_share']:.1%} of the 2-token rate, committed to the end: "
            f"{pool2['committed_to_end']}",
            flush=True,
        )
    return {
        "events": events,
        "hot_partitions": list(HOT),
        "hot_share": 0.7,
        "documented_records_per_s": 10 * PER_TOKEN_RPS * BATCH,
        "together": together,
        "scaling": scaling,
        "pool_of_two": pool2,
    }


class Fleet:
    """Replicas of ``dcr-stream run`` in one group, and a thread that samples each one's
    ``/metrics`` and ``/readyz`` every ``SAMPLE_S``."""

    def __init__(self, kafka: Broker, name: str, url: str, log: Path, **settings: str) -> None:
        self._kafka, self.topic, self._url, self._log = kafka, name, url, log
        self.settings = {**POOL, "kafka_group_id": unique("bench-group"), **settings}
        self.replicas: list[Service] = []
        self.timeline: list[dict[str, Any]] = []
        """Every ``SAMPLE_S``: seconds since the first spawn, and per replica its figures."""
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @property
    def group(self) -> str:
        return self.settings["kafka_group_id"]

    def add(self, count: int) -> list[Service]:
        added = []
        with self._lock:
            for _ in range(count):
                n = len(self.replicas)
                log = self._log.with_suffix(f".{n}.log")
                replica = service(
                    self._kafka, self.topic, self._url, log,
                    **self.settings, kafka_instance_id=f"replica-{n}",
                )  # fmt: skip
                self.replicas.append(replica)
                added.append(replica)
        return added

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            with self._lock:
                replicas = list(enumerate(self.replicas))
            entry: dict[str, Any] = {"t": round(time.monotonic() - self.started, 1)}
            for n, replica in replicas:
                if replica.proc.poll() is None and (figures := _figures(replica)) is not None:
                    entry[f"replica-{n}"] = figures
            self.timeline.append(entry)

    def last(self, n: int) -> dict[str, Any]:
        """Replica ``n``'s latest sample."""
        return next((e[f"replica-{n}"] for e in reversed(self.timeline) if f"replica-{n}" in e), {})

    def ever_ready(self, n: int) -> bool:
        return any(e.get(f"replica-{n}", {}).get("ready") for e in self.timeline)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for replica in self.replicas:
            replica.stop()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _figures(replica: Service) -> dict[str, Any] | None:
    """A replica's partitions, slots, buffered and delivered records and readiness; None before it
    serves HTTP or once it is going."""
    try:
        port = replica.http_port(timeout_s=0.01)
        metrics = scrape(port)
        ready, why = readiness(port)
    except (TimedOut, OSError, ValueError):
        return None
    return {
        "partitions": int(total(metrics, "dcr_assigned_partitions")),
        "slots": int(total(metrics, "dcr_token_slots_held")),
        "buffered": int(total(metrics, "dcr_buffered_records")),
        "delivered": int(total(metrics, "dcr_records_delivered_total")),
        "mints": int(total(metrics, "dcr_token_mints_total")),
        "ready": ready,
        **({} if ready else {"why": why}),
    }


def _backlog(kafka: Broker, url: str, events: int, prefix: str) -> str:
    http_json(f"{url}/_sandbox/reset", b"{}")
    name = topic(kafka, prefix)
    fill(kafka, name, events, partition_of=skewed)
    return name


def _accepted(url: str) -> int:
    return int(http_json(f"{url}/_sandbox/stats")["totals"]["records_accepted"])


def _wait_drained(
    kafka: Broker, fleet: Fleet, events: int, deadline_s: float = WAIT_S
) -> float | None:
    """When the group's commits reached the topic's end (monotonic), or None at the deadline."""
    with Offsets(kafka.bootstrap_servers, fleet.group, fleet.topic, PARTITIONS) as offsets:
        try:
            return wait_until(
                lambda: committed(offsets) >= events,
                timeout_s=deadline_s,
                interval_s=0.2,
                what="B5 commits",
            )
        except TimedOut:
            return None


def _figures_of_run(url: str, events: int, rps: float) -> dict[str, Any]:
    """The sandbox's figures of a run: the rate, deliveries twice, the token peak, the mints. Call
    it once the backlog is gone or at its deadline: a backlog not gone by then counts until now."""
    now = time.monotonic()
    stats = http_json(f"{url}/_sandbox/stats")
    accounts: list[dict[str, Any]] = list(stats["accounts"].values())
    token_use: dict[str, Any] = accounts[0].get("token_use", {}) if accounts else {}
    found = receipts(url)
    counts, last_new_ms = deliveries(found)
    delivered = len(counts)
    if found and last_new_ms is not None:
        end_s = last_new_ms / 1000 + 1 / rps if delivered >= events else now
        backlog_s = end_s - found[0].received_monotonic_ms / 1000
        rate = delivered / backlog_s
    else:
        backlog_s, rate = math.nan, 0.0
    totals = stats["totals"]
    return {
        "delivered": delivered,
        "delivered_twice": sum(count - 1 for count in counts.values()),
        "twice": _twice(found, counts),
        "backlog_s": round(backlog_s, 3),
        "minimum_s": math.ceil(events / BATCH) / rps,
        "records_per_s": round(rate, 1),
        "rate_share": round(rate / (rps * BATCH), 4),
        "requests": sum(totals["requests"].values()),
        "throttled": totals["throttled"],
        "throttled_by": totals.get("throttled_by", {}),
        "token_peak": max((u["peak"] for u in token_use.values()), default=0),
        "tokens_used": len(token_use),
        "mints": totals["tokens"].get("200", 0),
        "mints_refused": totals["tokens"].get("429", 0),
    }


def _twice(found: list[Receipt], counts: Counter[str]) -> dict[str, Any]:
    """Where the events delivered more than once came from: their partitions, and when (seconds
    from the first accepted batch) they were accepted again."""
    again = [r for r in found if counts[r.receiver] > 1]
    seen: set[str] = set()
    later = []
    for r in again:
        if r.receiver in seen:
            later.append(r.received_monotonic_ms)
        seen.add(r.receiver)
    start = found[0].received_monotonic_ms if found else 0.0
    return {
        "partitions": dict(sorted(Counter(skewed(int(r[4:])) for r in seen).items())),
        "again_from_s": round((min(later, default=start) - start) / 1000, 1),
        "again_until_s": round((max(later, default=start) - start) / 1000, 1),
    }


def _together(kafka: Broker, url: str, events: int, logs: Path) -> dict[str, Any]:
    name = _backlog(kafka, url, events, "b5")
    with Fleet(kafka, name, url, logs / "b5-together") as fleet:
        fleet.add(3)
        done = _wait_drained(kafka, fleet, events)
        if done is None:
            raise TimedOut(f"B5: three replicas did not drain {events} events in {WAIT_S} s")
        for replica in fleet.replicas:
            replica.alive()
        figures = _figures_of_run(url, events, 10 * PER_TOKEN_RPS)
        time.sleep(SAMPLE_S)  # one more sample of every replica, after the drain
        result = {
            **figures,
            "end_to_end_s": round(done - fleet.started, 2),
            "replicas": {f"replica-{n}": fleet.last(n) for n in range(3)},
            "timeline": fleet.timeline,
        }
    delete_topics(kafka.bootstrap_servers, [name])
    return result


def _scaling(kafka: Broker, url: str, events: int, logs: Path) -> dict[str, Any]:
    name = _backlog(kafka, url, events, "b5-scaling")
    with Fleet(kafka, name, url, logs / "b5-scaling") as fleet:
        (first,) = fleet.add(1)
        wait_until(
            lambda: first.alive() and _accepted(url) >= events / 3,
            timeout_s=WAIT_S,
            what="B5: a third accepted",
        )
        added_at = _accepted(url)
        added_s = time.monotonic() - fleet.started
        more = fleet.add(2)
        for replica in more:
            wait_until(
                partial(_owns_partitions, replica, name),
                timeout_s=WAIT_S,
                what="B5: a new replica to own partitions",
            )
        wait_until(
            lambda: _accepted(url) >= 2 * events / 3 or _committed_all(kafka, fleet, events),
            timeout_s=WAIT_S,
            what="B5: two thirds accepted",
        )
        stopped_at = _accepted(url)
        stopped_s = time.monotonic() - fleet.started
        for replica in more:
            replica.signal(signal.SIGTERM)
        exits = [replica.wait(60) for replica in more]
        done = _wait_drained(kafka, fleet, events)
        if done is None:
            raise TimedOut(f"B5: 1 -> 3 -> 1 did not drain {events} events in {WAIT_S} s")
        first.alive()
        letters = dead_lettered(kafka, name)
        accepted = {r.receiver for r in receipts(url)}
        lost = {f"9198{i:08d}" for i in range(events)} - accepted - letters.keys()
        with Offsets(kafka.bootstrap_servers, fleet.group, name, PARTITIONS) as offsets:
            ends = offsets.ends()
            uncommitted = sum(ends) - committed(offsets)
        result = {
            **_figures_of_run(url, events, 10 * PER_TOKEN_RPS),
            "events": events,
            "lost": len(lost),
            "lost_examples": sorted(lost)[:10],
            "dead_lettered": sum(letters.values()),
            "uncommitted": uncommitted,
            "added_at_accepted": added_at,
            "added_s": round(added_s, 1),
            "stopped_at_accepted": stopped_at,
            "stopped_s": round(stopped_s, 1),
            "stopped_exit_codes": exits,
            "end_to_end_s": round(done - fleet.started, 2),
            "timeline": fleet.timeline,
        }
    delete_topics(kafka.bootstrap_servers, [name])
    return result


def _pool_of_two(kafka: Broker, url: str, events: int, logs: Path) -> dict[str, Any]:
    name = _backlog(kafka, url, events, "b5-pool2")
    rps = 2 * PER_TOKEN_RPS
    deadline_s = 2 * events / (rps * BATCH) + 30
    with Fleet(kafka, name, url, logs / "b5-pool2", token_pool_size="2") as fleet:
        fleet.add(4)
        done = _wait_drained(kafka, fleet, events, deadline_s)
        figures = _figures_of_run(url, events, rps)
        time.sleep(SAMPLE_S)
        last = {f"replica-{n}": fleet.last(n) for n in range(4)}
        result = {
            **figures,
            "events": events,
            "committed_to_end": done is not None,
            "deadline_s": deadline_s,
            "ready_at_end": sum(1 for figures in last.values() if figures.get("ready")),
            "ever_ready": sum(fleet.ever_ready(n) for n in range(4)),
            "replicas": last,
            "timeline": fleet.timeline,
        }
    delete_topics(kafka.bootstrap_servers, [name])
    return result


def _owns_partitions(replica: Service, name: str) -> bool:
    """Whether the replica's input consumer was given partitions of topic ``name``."""
    return replica.alive() and any(
        e["message"].startswith("assigned ") and f"{name}[" in e["message"] for e in replica.lines()
    )


def _committed_all(kafka: Broker, fleet: Fleet, events: int) -> bool:
    with Offsets(kafka.bootstrap_servers, fleet.group, fleet.topic, PARTITIONS) as offsets:
        return committed(offsets) >= events
