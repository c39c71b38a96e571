"""The hot path in one process, stage by stage: CPU µs per record (issue 18).

    .venv/bin/python -m bench.stages [--events 100000] [--repeat 5] [--invalid-every 0]

Feeds real ``confluent_kafka.Message`` objects (made directly, no broker) in consumed slices of
500, one partition's run at a time over 8 partitions as librdkafka hands them over, through the
service's own code: ``Pipeline._on_messages`` (offsets, decode + validate, the label gate,
``Delivery.submit_all`` and the batcher), then per full batch what ``Delivery`` does to a batch
before and after its request (the expiry check, ``encode_batch``, ``Pipeline.delivered``), and a
commit round (``OffsetTracker.to_commit``/``committed``) per ten slices, as the 100 ms commit
timer does at B1's pace. What it leaves out is what B1 measures end to end: librdkafka, the
consumer thread, the quota lanes and aiohttp.

Each stage is timed where the pipeline hands over (per slice, per batch, per commit), so the
timers cost nothing per record. ``on_messages`` is then split by timing its parts alone on the
same slices: decode + validate, and offsets received; each stage is reported without the stages
it calls (``_own``). The report is the median of ``--repeat`` passes, per stage, in µs a record;
with a profiler attached (py-spy) the whole pass is the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Message

from bench.harness import ACCOUNT
from stream.app import Pipeline
from stream.batching import Batch
from stream.config import load
from stream.delivery import Delivery
from stream.events import encode_batch
from stream.finishing import Finisher, Source
from stream.labels import LabelGate
from stream.validation import validate_all
from stream.wire import Response
from tests.support.events import LABEL, events

RESULTS = Path(__file__).resolve().parent / "results" / "stages.json"
TOPIC = "bench-stages"
PARTITIONS = 8
SLICE = 500
COMMIT_EVERY = 10
"""Slices between commit rounds: B1 reads ~20 slices per 100 ms commit interval."""


def messages(count: int, invalid_every: int) -> list[list[Message]]:
    """``count`` messages in consumed slices: runs of one partition, rotating over 8."""
    now_ms = time.time_ns() // 1_000_000
    values = [e.value for e in events(count, invalid_every=invalid_every, now_ms=now_ms,
                                      accounts=(ACCOUNT,))]  # fmt: skip
    offsets = [0] * PARTITIONS
    slices = []
    for n, start in enumerate(range(0, count, SLICE)):
        partition = n % PARTITIONS
        run = []
        for value in values[start : start + SLICE]:
            run.append(Message(topic=TOPIC, partition=partition, offset=offsets[partition],
                               value=value))  # fmt: skip
            offsets[partition] += 1
        slices.append(run)
    return slices


class _Clock:
    """Nanoseconds spent per stage in one pass."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = {}

    def timed(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        ns = self.ns
        ns.setdefault(stage, 0)

        def run(*args: Any) -> Any:
            started = time.perf_counter_ns()
            try:
                return fn(*args)
            finally:
                ns[stage] += time.perf_counter_ns() - started

        return run


class _Sent(Delivery[Source]):
    """``Delivery`` whose full batches go out at once, synchronously, to an API that accepts them:
    the per-record work of ``Delivery._send`` (``_drop_expired``, encode) and the outcome, without
    the lanes."""

    clock: _Clock

    def _dispatch(self, batch: Batch[Source]) -> None:
        clock = self.clock
        started = time.perf_counter_ns()
        expiring = self._drop_expired(batch)
        try:  # nothing expires here, so the coroutine never suspends
            expiring.send(None)
        except StopIteration as done:
            batch.items = done.value
        encode_batch([p.record for p in batch.items], self._version)
        sent = time.perf_counter_ns()
        clock.ns["send"] += sent - started
        self._answers.outcomes.delivered(batch, Response(status=200))
        clock.ns["delivered"] += time.perf_counter_ns() - sent


def _pipeline(clock: _Clock) -> Pipeline:
    config = load(
        {
            "DCR_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "DCR_KAFKA_TOPICS": TOPIC,
            "DCR_API_BASE_URL": "http://127.0.0.1:1",
            "DCR_API_TOKEN": "bench",
            "DCR_ALLOWED_LABEL_IDS": f"{ACCOUNT}:{LABEL}",
        }
    )
    pipeline = Pipeline(config)
    finisher = pipeline._finisher = Finisher(
        pipeline.tracker,
        pipeline.counts,
        dlq=None,  # type: ignore[arg-type]  # every record is valid and accepted
        receipts=None,
        reconciling=False,
        high_topics=(),
        backoff=pipeline._backoff,
        rng=pipeline._rng,
        wall_ms=pipeline._wall_ms,
    )
    delivery = _Sent(client=None, tokens=None, outcomes=finisher,  # type: ignore[arg-type]
                     version=config.api_version, linger_s=3600, rate_limit_rps=None)  # fmt: skip
    delivery.clock = clock
    clock.ns.update(send=0, delivered=0)
    pipeline._delivery = finisher.delivery = delivery
    pipeline._labels = LabelGate(
        None,  # type: ignore[arg-type]
        refresh_s=3600,
        overridden=config.allowed_label_ids,
        release=delivery.submit_all,
        refuse=finisher.unknown_label,
        probe=finisher.probe,
    )
    pipeline.tracker.assign((TOPIC, p) for p in range(PARTITIONS))
    return pipeline


async def _pass(slices: list[list[Message]]) -> dict[str, int]:
    """One pass through the pipeline: nanoseconds per stage."""
    clock = _Clock()
    pipeline = _pipeline(clock)
    on_messages = clock.timed("on_messages", pipeline._on_messages)
    assert pipeline._delivery is not None
    delivery = pipeline._delivery
    delivery.submit_all = clock.timed("batching", delivery.submit_all)  # type: ignore[method-assign]
    tracker = pipeline.tracker
    commit = clock.timed("commit", lambda: tracker.committed(tracker.to_commit()))
    for n, run in enumerate(slices, 1):
        on_messages(run)
        if n % COMMIT_EVERY == 0:
            commit()
    assert pipeline._delivery is not None
    pipeline._delivery.flush_open()
    commit()
    assert tracker.unfinished() == 0, "every record must have finished"
    await pipeline._delivery.close()
    return clock.ns


def _parts(slices: list[list[Message]]) -> dict[str, int]:
    """The parts of ``on_messages`` alone, on the same slices (each one partition's run)."""
    now_ms = time.time_ns() // 1_000_000
    pipeline = _pipeline(_Clock())
    rules = pipeline._rules
    receive_run = pipeline.tracker.receive_run
    ns = {"decode_validate": 0, "offsets_receive": 0}
    for run in slices:
        started = time.perf_counter_ns()
        validate_all(map(Message.value, run), rules=rules, now_ms=now_ms)
        received = time.perf_counter_ns()
        receive_run(TOPIC, run[0].partition() or 0, [m.offset() or 0 for m in run])
        ns["decode_validate"] += received - started
        ns["offsets_receive"] += time.perf_counter_ns() - received
    return ns


def _own(ns: dict[str, int]) -> dict[str, int]:
    """Each stage without the stages inside it: a full batch is sent (and delivered) from within
    ``submit_all``, which runs within ``on_messages``; decode + validate and offsets are timed
    alone and taken out of ``on_messages``."""
    batching = ns["batching"] - ns["send"] - ns["delivered"]
    rest = ns["on_messages"] - ns["batching"] - ns["decode_validate"] - ns["offsets_receive"]
    return {
        "decode + validate": ns["decode_validate"],
        "offsets received": ns["offsets_receive"],
        "slice: runs, objects, label gate": rest,
        "batching": batching,
        "send: expiry + encode": ns["send"],
        "delivered: outcome + offsets": ns["delivered"],
        "commit": ns["commit"],
        "total (CPU)": ns["total (CPU)"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--invalid-every", type=int, default=0, help="0: all valid (as B1)")
    parser.add_argument("--no-gc", action="store_true", help="with the garbage collector off")
    args = parser.parse_args(argv)
    slices = messages(args.events, args.invalid_every)
    count = sum(map(len, slices))
    samples: dict[str, list[float]] = {}
    loop = asyncio.new_event_loop()
    if args.no_gc:
        gc.disable()
    for _ in range(args.repeat):
        gc.collect()
        started = time.process_time_ns()
        stages = loop.run_until_complete(_pass(slices))
        stages["total (CPU)"] = time.process_time_ns() - started
        stages |= _parts(slices)
        stages = _own(stages)
        for stage, ns in stages.items():
            samples.setdefault(stage, []).append(ns / count / 1000)
    loop.close()
    result = {stage: round(statistics.median(v), 3) for stage, v in samples.items()}
    print(f"{count} records, median of {args.repeat} passes, µs a record:")
    for stage, us in result.items():
        print(f"  {stage:<34} {us:7.3f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"records": count, "us_per_record": result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
