"""Decode + validate per event, against bare JSON decoding measured in the same run.

    .venv/bin/python -m bench.bench_validate [--events 100000] [--repeat 7]

The events are realistic Kafka values (``tests.support.events`` with an rng): 98 % valid (phone
numbers written in the usual ways, optional label names and call reasons, some high priority), 2 %
invalid across the common mistakes. Each repetition times one pass over all of them; the report is
the median per event, for ``validate``, for ``validate_all`` over slices of 500 (as the pipeline
calls it) and for two baselines (``msgspec.json.decode`` into a dict,
and ``json.loads``), and the ratios, which are what to compare across machines (these machines are
noisy). Results are printed and written to ``bench/results/validate.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec

from stream.events import Record
from stream.validation import Rules, validate, validate_all
from tests.support.events import events

NOW = 4_102_444_800_000
ACCOUNTS = (
    "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11",
    "9a3c2f6d-1b9e-4a11-8d0a-6f1c1c3e7d0a",
    "3c9e2a71-5b4d-4f08-9e6a-c1d2e3f4a5b6",
)
RESULTS = Path(__file__).resolve().parent / "results" / "validate.json"
SLICE = 500


def sample(count: int, seed: int = 7) -> list[bytes]:
    """``count`` events as a producer in the wild writes them (``tests.support.events`` with an
    rng), every 50th invalid."""
    made = events(count, invalid_every=50, now_ms=NOW, accounts=ACCOUNTS, rng=random.Random(seed))
    return [event.value or b"" for event in made]


def ns_per_event(run: Callable[[Sequence[bytes]], None], values: Sequence[bytes]) -> float:
    """One pass over ``values``: nanoseconds per value."""
    gc.collect()
    started = time.perf_counter_ns()
    run(values)
    return (time.perf_counter_ns() - started) / len(values)


def run_validate(values: Sequence[bytes]) -> None:
    rules = Rules()
    for value in values:
        validate(value, rules=rules, now_ms=NOW)


def run_validate_all(values: Sequence[bytes]) -> None:
    """As the pipeline does: a consumed slice of 500 at a time."""
    rules = Rules()
    for start in range(0, len(values), SLICE):
        validate_all(values[start : start + SLICE], rules=rules, now_ms=NOW)


# The baselines use try/except, not contextlib.suppress: a context manager per value would add
# to the baseline what validate() does not pay.
def run_msgspec_dict(values: Sequence[bytes]) -> None:
    decode = msgspec.json.decode
    for value in values:
        try:  # noqa: SIM105
            decode(value)
        except msgspec.DecodeError:
            pass


def run_json_loads(values: Sequence[bytes]) -> None:
    loads = json.loads
    for value in values:
        try:  # noqa: SIM105
            loads(value)
        except ValueError:
            pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events (default: 100000)")
    parser.add_argument("--repeat", type=int, default=7, help="passes per variant (default: 7)")
    args = parser.parse_args(argv)

    values = sample(args.events)
    verdicts = Counter(
        "valid" if isinstance(r, Record) else r.code
        for r in (validate(v, rules=Rules(), now_ms=NOW) for v in values)
    )
    # Interleave the variants so a slow phase of the machine does not land on one of them alone.
    variants = {
        "validate": run_validate,
        "validate_all": run_validate_all,
        "msgspec.json.decode": run_msgspec_dict,
        "json.loads": run_json_loads,
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name, run in variants.items():
            samples[name].append(ns_per_event(run, values))
    median_ns = {name: statistics.median(times) for name, times in samples.items()}

    result = {
        "events": len(values),
        "repeat": args.repeat,
        "mean_event_bytes": round(sum(map(len, values)) / len(values), 1),
        "verdicts": dict(verdicts.most_common()),
        "median_ns_per_event": {k: round(v, 1) for k, v in median_ns.items()},
        "events_per_s": {k: round(1e9 / v) for k, v in median_ns.items()},
        "ratio_validate_to_msgspec_decode": round(
            median_ns["validate"] / median_ns["msgspec.json.decode"], 2
        ),
        "ratio_validate_to_json_loads": round(median_ns["validate"] / median_ns["json.loads"], 2),
        "python": sys.version.split()[0],
        "msgspec": msgspec.__version__,
        "machine": f"{platform.system()} {platform.machine()}",
    }
    print(
        f"{len(values)} events, {result['mean_event_bytes']} bytes on average, "
        f"{verdicts['valid'] / len(values):.1%} valid; median of {args.repeat} passes"
    )
    for name, ns in median_ns.items():
        print(f"  {name:<20} {ns:8.0f} ns/event  {1e9 / ns:>12,.0f} events/s")
    print(f"  validate / msgspec.json.decode = {result['ratio_validate_to_msgspec_decode']}")
    print(f"  validate / json.loads          = {result['ratio_validate_to_json_loads']}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
