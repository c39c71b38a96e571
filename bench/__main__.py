"""Run the benchmarks: ``.venv/bin/python -m bench [--size quick|full] [--only B1,B3] [--readme]``.

B1 throughput against a bare consume loop, B2 quota efficiency, B3 latency, B4 memory with the API
down; on request only (``--only B5,B8``: minutes each) B5 scale-out, B6 many accounts, B7 a soak in
compressed time and B8 what a crash costs (see each module's docstring). One local Kafka broker
serves the whole run. Figures go to ``bench/results/latest.json`` (and ``<size>.json`` for B1-B4,
``<benches>-<size>.json`` for any other choice), child logs to ``bench/results/logs/``;
``--readme`` rewrites the figures block of ``bench/README.md`` from ``quick.json`` and
``full.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import accounts, crash, latency, memory, quota, scaleout, soak, throughput
from bench.harness import RESULTS, machine
from tests.support.kafka import start_broker

README = Path(__file__).resolve().parent / "README.md"


@dataclass(frozen=True, kw_only=True)
class Size:
    b1_events: int
    b1_pairs: int
    b2_events: int
    b3_seconds: float
    b4_events: int
    b4_seconds: float
    repeat: int
    """Runs of B2, B3 and B4 (B4: of each of idle and backlog, alternating)."""
    b5_events: int
    b5_pool2_events: int
    b6_accounts: int
    b6_busy_s: float
    """Seconds of the busy account's quota in B6's backlog."""
    b7_seconds: float


SIZES = {
    "quick": Size(
        b1_events=100_000,
        b1_pairs=3,
        b2_events=60_000,
        b3_seconds=15,
        b4_events=200_000,
        b4_seconds=15,
        repeat=1,
        b5_events=50_000,
        b5_pool2_events=20_000,
        b6_accounts=300,
        b6_busy_s=20,
        b7_seconds=240,
    ),
    "full": Size(
        b1_events=1_000_000,
        b1_pairs=3,
        b2_events=300_000,
        b3_seconds=60,
        b4_events=1_000_000,
        b4_seconds=30,
        repeat=3,
        b5_events=100_000,
        b5_pool2_events=40_000,
        b6_accounts=1000,
        b6_busy_s=60,
        b7_seconds=600,
    ),
}


@dataclass(frozen=True)
class Target:
    name: str
    bench: str
    read: Callable[[dict[str, Any]], float]
    bound: float
    at_least: bool

    def check(self, results: dict[str, Any]) -> dict[str, Any] | None:
        if self.bench not in results:
            return None
        value = self.read(results[self.bench])
        holds = value >= self.bound if self.at_least else value <= self.bound
        return {"value": value, "bound": f"{'>=' if self.at_least else '<='} {self.bound}",
                "holds": holds}  # fmt: skip


TARGETS = (
    Target("B1 service/bare ratio", "B1", lambda r: r["ratio"], 0.5, True),
    Target("B2 share of the quota used", "B2", lambda r: r["quota_used"], 0.97, True),
    Target("B2 share of 429s", "B2", lambda r: r["share_429"], 0.01, False),
    Target("B2 mean batch", "B2", lambda r: r["mean_batch"], 495, True),
    Target("B3 p99 ms", "B3", lambda r: r["p99_ms"], 350, False),
    Target("B3 urgent p99 ms", "B3", lambda r: r["urgent"]["p99_ms"], 500, False),
    Target("B3 urgent, lane off, p99 ms", "B3", lambda r: r["urgent_batch"]["p99_ms"], 2000, False),
    Target("B4 peak RSS MiB", "B4", lambda r: r["peak_rss_mib"], 200, False),
    Target(
        "B5 three replicas, share of the documented rate",
        "B5",
        lambda r: r["together"]["rate_share"],
        0.97,
        True,
    ),
    Target(
        "B5 three replicas, delivered twice",
        "B5",
        lambda r: r["together"]["delivered_twice"],
        1000,
        False,
    ),
    Target(
        "B5 three replicas, token peak a minute",
        "B5",
        lambda r: r["together"]["token_peak"],
        60,
        False,
    ),
    Target("B5 three replicas, mints", "B5", lambda r: r["together"]["mints"], 10, False),
    Target("B5 1-3-1, events lost", "B5", lambda r: r["scaling"]["lost"], 0, False),
    Target(
        "B5 pool of 2, replicas ready of 4",
        "B5",
        lambda r: r["pool_of_two"]["ready_at_end"],
        4,
        True,
    ),
    Target(
        "B5 pool of 2, share of the 2-token rate",
        "B5",
        lambda r: r["pool_of_two"]["rate_share"],
        0.95,
        True,
    ),
    Target("B6 every event delivered", "B6", lambda r: r["all_delivered"], 1, True),
    Target("B6 mints per quiet account, max", "B6", lambda r: r["quiet_mints_max"], 2, False),
    Target("B6 mints refused a key pair", "B6", lambda r: r["mints_unauthorized"], 0, False),
    Target("B6 label reads per account, max", "B6", lambda r: r["label_reads_max"], 3, False),
    Target("B6 peak RSS MiB", "B6", lambda r: r["peak_rss_mib"], 400, False),
    Target("B6 busy account, share of its quota", "B6", lambda r: r["busy_share"], 0.95, True),
    Target("B7 lag bounded", "B7", lambda r: r["lag_bounded"], 1, True),
    Target("B7 token-limit 429s", "B7", lambda r: r["throttled_token"], 0, False),
    Target("B7 mints in any 60 s", "B7", lambda r: r["mints_most_in_window"], 10, False),
    Target("B7 mints refused", "B7", lambda r: r["mints_refused"], 0, False),
    Target(
        "B8 restart to deliveries, instance id, s",
        "B8",
        lambda r: r["static"]["resumed_s"],
        10,
        False,
    ),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="quick", help="default: quick")
    parser.add_argument(
        "--only",
        default="B1,B2,B3,B4",
        help="comma list (default: B1-B4; B5-B8 take minutes and run only when named)",
    )
    parser.add_argument("--repeat", type=int, help="override the size's runs of B2-B4")
    parser.add_argument(
        "--soak-s",
        type=float,
        help="override the size's seconds of B7's load (quick 240, full 600)",
    )
    parser.add_argument(
        "--soak-reconcile",
        choices=("auto", "on", "off"),
        default="auto",
        help="B7's DCR_RECONCILE (default: auto, on for v2): off tells the reconciler's cost apart",
    )
    parser.add_argument(
        "--readme", action="store_true", help="rewrite bench/README.md's figures and exit"
    )
    args = parser.parse_args(argv)
    if args.readme:
        update_readme()
        return 0
    size = SIZES[args.size]
    if args.soak_s is not None:
        size = replace(size, b7_seconds=args.soak_s)
    repeat = args.repeat or size.repeat
    only = {name.strip().upper() for name in args.only.split(",")}
    logs = RESULTS / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)

    started = time.time()
    results: dict[str, Any] = {}
    # The local jars, never a container: the figures are comparable from run to run.
    with start_broker(docker=False, heap_mb=512) as broker:
        info = machine(broker)
        print(f"bench --size {args.size} on {info['nproc']} x {info['cpu_model']}, "
              f"Kafka {info['kafka']} at {broker.bootstrap_servers}", flush=True)  # fmt: skip
        if "B1" in only:
            print("B1 throughput against a bare consume loop", flush=True)
            results["B1"] = throughput.run(
                broker, events=size.b1_events, pairs=size.b1_pairs, logs=logs
            )
        if "B2" in only:
            print("B2 quota efficiency", flush=True)
            results["B2"] = quota.run(broker, events=size.b2_events, repeat=repeat, logs=logs)
        if "B3" in only:
            print("B3 latency", flush=True)
            results["B3"] = latency.run(broker, seconds=size.b3_seconds, repeat=repeat, logs=logs)
        if "B4" in only:
            print("B4 memory with the API down", flush=True)
            results["B4"] = memory.run(
                broker, events=size.b4_events, seconds=size.b4_seconds, repeat=repeat, logs=logs
            )
        if "B5" in only:
            print("B5 scale-out: replicas sharing one account's pool", flush=True)
            results["B5"] = scaleout.run(
                broker, events=size.b5_events, pool2_events=size.b5_pool2_events, logs=logs
            )
        if "B6" in only:
            print("B6 many accounts in one replica", flush=True)
            results["B6"] = accounts.run(
                broker, accounts=size.b6_accounts, busy_seconds=size.b6_busy_s, logs=logs
            )
        if "B7" in only:
            print("B7 soak: token generations in compressed time", flush=True)
            results["B7"] = soak.run(
                broker, seconds=size.b7_seconds, reconcile=args.soak_reconcile, logs=logs
            )
        if "B8" in only:
            print(
                "B8 kill -9 and an immediate restart, with and without an instance id", flush=True
            )
            results["B8"] = crash.run(broker, logs=logs)
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    targets = {t.name: c for t in TARGETS if (c := t.check(results)) is not None}
    document = {
        "size": args.size,
        "sizes": asdict(size),
        "repeat": repeat,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "minutes": round((time.time() - started) / 60, 1),
        "machine": info,
        "targets": targets,
        "results": results,
    }
    text = json.dumps(document, indent=2) + "\n"
    (RESULTS / "latest.json").write_text(text)
    if only == {"B1", "B2", "B3", "B4"}:
        (RESULTS / f"{args.size}.json").write_text(text)
    else:  # kept apart, so that a run of B5-B8 does not overwrite another's
        (RESULTS / f"{'-'.join(sorted(only))}-{args.size}.json").write_text(text)
    print(render(document))
    print(f"wrote {RESULTS / 'latest.json'}")
    return 0 if all(t["holds"] for t in targets.values()) else 1


def render(document: dict[str, Any]) -> str:
    """The figures of one run as markdown."""
    r, m = document["results"], document["machine"]
    lines = [
        f"**{document['size']}** run of {document['started']} ({document['minutes']} min): "
        f"nproc {m['nproc']}, CPU {m['cpu_model']}, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, confluent-kafka {m['confluent_kafka']} / librdkafka "
        f"{m['librdkafka']}, Apache Kafka {m['kafka']}, {m['kafka_broker']}; load average "
        f"{m['load_average_at_start'][0]} at the start.",
        "",
        "| bench | figure | value |",
        "|---|---|---|",
    ]
    if b1 := r.get("B1"):
        bare, svc = b1["bare"], b1["service"]
        lines += [
            f"| B1 ({b1['events']:,} events, {b1['pairs']} pairs) | bare consume loop | "
            f"{bare['records_per_s']:,.0f} records/s, {bare['cpu_s_per_million']} CPU-s/M |",
            f"| | `dcr-stream run` → sink | {svc['records_per_s']:,.0f} records/s, "
            f"{svc['cpu_s_per_million']} CPU-s/M, start-up {svc['startup_s']} s |",
            f"| | **ratio** (median of pairs) | **{b1['ratio']}** ({', '.join(map(str, b1['ratios']))}) |",  # noqa: E501
        ]
    if b2 := r.get("B2"):
        lines += [
            f"| B2 ({b2['events']:,} events, {b2['rate_limit_rps']} req/s) | drain time | "
            f"{b2['drain_s']} s (minimum {b2['minimum_s']} s; spawn → committed "
            f"{b2['end_to_end_s']} s) |",
            f"| | **quota used** | **{b2['quota_used']:.1%}** |",
            f"| | 429s | {b2['share_429']:.2%} of {b2['requests']:.0f} requests |",
            f"| | mean batch | {b2['mean_batch']} records |",
        ]
    if b3 := r.get("B3"):
        lines += [
            f"| B3 ({b3['rate_per_s']}/s for {b3['seconds']:.0f} s, linger {b3['linger_ms']} ms)"
            f" | p50 / p90 / **p99** / max | {b3['p50_ms']:.0f} / {b3['p90_ms']:.0f} / "
            f"**{b3['p99_ms']:.0f}** / {b3['max_ms']:.0f} ms |",
        ]
        for name, how in (("urgent", "single-record endpoint"), ("urgent_batch", "lane off")):
            if u := b3.get(name):
                lines.append(
                    f"| B3 urgent, {b3['urgent_rate_per_s']}/s behind a full batch lane ({how})"
                    f" | p50 / **p99** / max | {u['p50_ms']:.0f} / **{u['p99_ms']:.0f}** / "
                    f"{u['max_ms']:.0f} ms |"
                )
    if b4 := r.get("B4"):
        lines += [
            f"| B4 ({b4['events']:,} events, API down, {b4['seconds']:.0f} s) | **peak RSS** | "
            f"**{b4['peak_rss_mib']} MiB** (idle service {b4['idle_peak_rss_mib']} MiB, "
            f"x {b4['ratio_to_idle']}) |",
        ]
    if b5 := r.get("B5"):
        tg, sc, p2 = b5["together"], b5["scaling"], b5["pool_of_two"]
        lines += [
            f"| B5 three replicas together ({b5['events']:,} events, 70% on 2 of 8 partitions) | "
            f"**rate**, twice, token peak, mints | **{tg['rate_share']:.1%}** of 5,000 records/s "
            f"({tg['backlog_s']} s, minimum {tg['minimum_s']} s); {tg['delivered_twice']} "
            f"delivered twice; {tg['token_peak']} a minute; {tg['mints']} mints |",
            f"| B5 1 → 3 → 1 ({sc['events']:,} events; two added at {sc['added_at_accepted']:,} "
            f"accepted, stopped at "
            f"{sc['stopped_at_accepted']:,}) | **lost** | **{sc['lost']}** (dead-lettered "
            f"{sc['dead_lettered']}, uncommitted {sc['uncommitted']}); {sc['rate_share']:.1%} of "
            f"5,000 records/s; {sc['delivered_twice']} delivered twice |",
            f"| B5 four replicas, a pool of 2 ({p2['events']:,} events) | **ready**, rate | "
            f"**{p2['ready_at_end']} of 4** ready; **{p2['rate_share']:.1%}** of 1,000 records/s; "
            f"committed to the end: {'yes' if p2['committed_to_end'] else 'no'} |",
        ]
    if b6 := r.get("B6"):
        every = "yes" if b6["all_delivered"] else "**no**"
        lines += [
            f"| B6 one replica, {b6['quiet_accounts']:,} quiet accounts x "
            f"{b6['events_per_quiet_account']} events + one busy ({b6['busy_events']:,}) | "
            f"delivered, mints, label reads | every event: {every} ({b6['delivered_twice']} twice)"
            f"; mints per quiet account max "
            f"**{b6['quiet_mints_max']}** (mean {b6['quiet_mints_mean']}); label reads per "
            f"account max **{b6['label_reads_max']}** |",
            f"| | **peak RSS**, busy account's rate | **{b6['peak_rss_mib']} MiB**; "
            f"**{b6['busy_share']:.1%}** of its quota ({b6['busy_drain_s']} s, minimum "
            f"{b6['busy_minimum_s']} s) |",
            f"| | `/metrics` series, per-account labels on / off | {b6['series']:,} / "
            f"{b6['series_per_account_off']:,} |",
        ]
    if b7 := r.get("B7"):
        lines += [
            f"| B7 {b7['rate_per_s']:,.0f} records/s for {b7['seconds']:.0f} s, 120 s tokens, "
            f"10 mints per 60 s, `DCR_RECONCILE={b7['reconcile']}` | lag max per generation | "
            f"{', '.join(f'{g:,}' for g in b7['lag_max_per_generation'])} (bounded: "
            f"{'yes' if b7['lag_bounded'] else '**no**'}) |",
            f"| | token-limit 429s, mints | **{b7['throttled_token']}**; {b7['mints']} minted, "
            f"at most **{b7['mints_most_in_window']}** in 60 s, {b7['mints_refused']} refused |",
        ]
    if b8 := r.get("B8"):
        for name, how in (("static", "with `DCR_KAFKA_INSTANCE_ID`"), ("dynamic", "without")):
            case = b8[name]
            lines.append(
                f"| B8 kill -9 at {b8['kill_at']:,} accepted, restarted at once, {how} | "
                f"**deliveries' gap** (restart to first batch) | **{case['gap_s']:.1f} s** "
                f"({case['resumed_s']:.1f} s) |"
            )
    lines += ["", "| target | value | bound | holds |", "|---|---|---|---|"]
    for name, t in document["targets"].items():
        lines.append(
            f"| {name} | {t['value']} | {t['bound']} | {'yes' if t['holds'] else '**no**'} |"
        )
    return "\n".join(lines)


_BLOCK = re.compile(r"(<!-- figures:start -->\n).*?(<!-- figures:end -->)", re.S)


def update_readme() -> None:
    parts = []
    for size in ("full", "quick"):
        path = RESULTS / f"{size}.json"
        if path.exists():
            parts.append(render(json.loads(path.read_text())))
    if not parts:
        sys.exit("no results/full.json or results/quick.json yet: run the benchmarks first")
    text = README.read_text()
    README.write_text(_BLOCK.sub(lambda m: m[1] + "\n\n".join(parts) + "\n" + m[2], text))
    print(f"updated {README}")


if __name__ == "__main__":
    sys.exit(main())
