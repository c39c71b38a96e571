"""What holding receipts costs the reconciler: CPU a second and RSS per receipt held (B7's growth).

    .venv/bin/python -m bench.reconcile_hold [--sizes 1000 10000 50000] [--window-s 10]

One process per (size, state), so that each RSS is its own: a ``Reconciler`` of the service's code
takes ``size`` receipts through ``_on_messages`` (real ``confluent_kafka.Message`` objects, no
broker), then its loop runs for ``--window-s`` while ``time.process_time`` counts its CPU, with a
scrape of ``lag_s`` and ``in_hand`` every second as ``/metrics`` would. Two states:

- ``waiting``: every receipt waits for its status delay (an hour away);
- ``due``: every receipt is due, and they queue for the status budget: 10 tokens at 30 status
  requests a minute, 5 a second, one every 0.2 s (the tokens' slots staggered, as minted tokens'
  are), as in B7, where the receipts come at 9 batches a second. The API
  answers at once with an empty status and no original is read back, so a look costs little; what
  grows with the size is the cost of the receipts waiting their turn.

Reported per run: CPU seconds per second of the window, RSS growth per receipt held (KiB), and the
µs one scrape took. The figures go to stdout as JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import time
from typing import Any, cast

import msgspec
from confluent_kafka import Message

from bench.harness import ACCOUNT
from stream.api import ApiClient, BatchStatus, StatusAnswer
from stream.credentials import StaticTokens
from stream.dlq import DeadLetterProducer
from stream.errors import DeadLetterError, ReceiptError
from stream.metrics import Counts
from stream.receipts import Receipt, Receipts, offset_ranges
from stream.reconcile import Reconciler
from stream.retry import AckedWriter, Backoff
from stream.secrets import Secret
from stream.tokens import Tokens

TOPIC = "bench.receipts"
PARTITIONS = 8
TOKENS = 10
STATUS_RPM = 30
HOUR_S = 3600.0


def rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGESIZE") // 1024


class _Api:
    """Answers every status request at once: a batch that lists nothing."""

    async def get_batch_status(self, account: str, batch_id: str, token: str) -> StatusAnswer:
        return StatusAnswer(200, BatchStatus(data=[]))


class _Nothing:
    """The originals reader, the receipts and dead-letter producers: read nothing, keep nothing."""

    alive = True

    async def read(self, positions: Any) -> list[Message]:
        return []

    async def send(self, *_: Any) -> None:
        return None

    async def close(self) -> None:
        return None


async def one(size: int, state: str, window_s: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    tokens = Tokens(
        StaticTokens([Secret(f"token-{i}") for i in range(TOKENS)]), requests_per_minute=60
    )
    await tokens.get(ACCOUNT)
    nothing = _Nothing()
    backoff, rng, log = Backoff(), random.Random(1), logging.getLogger("bench.reconcile_hold")
    now_ms = time.time_ns() // 1_000_000
    reconciler = Reconciler(
        consumer_config={},
        admin_config={},
        topic=TOPIC,
        group_id="bench.reconcile",
        client=cast(ApiClient, _Api()),
        tokens=tokens,
        receipts=cast(Receipts, nothing),
        dlq=cast(DeadLetterProducer, nothing),
        receipt_writes=AckedWriter(
            ReceiptError, what="receipt writes", backoff=backoff, rng=rng, log=log
        ),
        dlq_writes=AckedWriter(
            DeadLetterError, what="dead-letter writes", backoff=backoff, rng=rng, log=log
        ),
        delay_s=HOUR_S if state == "waiting" else 0.0,
        give_up_s=2 * HOUR_S,
        requests_per_minute=STATUS_RPM,
        backoff=backoff,
        counts=Counts(),
        loop=loop,
        rng=rng,
    )
    reconciler._reader = cast(Any, nothing)
    for _ in range(TOKENS):
        # Each token's slots at their own time, as minted tokens' are (B7): a slot every 0.2 s.
        await reconciler._budget.take(ACCOUNT)
        await asyncio.sleep(60 / STATUS_RPM / TOKENS)
    reconciler._tracker.assign((TOPIC, p) for p in range(PARTITIONS))
    encoder = msgspec.json.Encoder()
    messages = []
    for i in range(size):
        receipt = Receipt(
            account=ACCOUNT,
            records=500,
            status=200,
            batch_id=f"batch-{i}",
            sent_at_ms=now_ms - i % 1000,
            sources=offset_ranges(("intents", i % 8, i * 500 + o) for o in range(500)),
        )
        partition = i % PARTITIONS
        value = encoder.encode(receipt)
        messages.append(Message(topic=TOPIC, partition=partition, offset=i, value=value))
    await asyncio.sleep(0.5)
    before_kib = rss_kib()
    reconciler._on_messages(messages)
    del messages
    await asyncio.sleep(1.0)  # every task started and waiting
    held_kib = rss_kib() - before_kib
    scrapes: list[float] = []
    finished = reconciler.finished
    cpu, wall = time.process_time(), time.monotonic()
    end = wall + window_s
    while time.monotonic() < end:
        await asyncio.sleep(1.0)
        started = time.perf_counter()
        reconciler.lag_s()
        reconciler.in_hand()
        scrapes.append(time.perf_counter() - started)
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    looked = reconciler.finished - finished
    await reconciler.close(1.0)
    await tokens.close()
    return {
        "size": size,
        "state": state,
        "cpu_per_s": round(cpu / wall, 4),
        "rss_kib_per_receipt": round(held_kib / size, 2),
        "scrape_us": round(1e6 * sorted(scrapes)[len(scrapes) // 2], 1),
        "looked_per_s": round(looked / wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile_hold")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    parser.add_argument("--states", nargs="+", default=["waiting", "due"])
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "STATE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # a look at a batch with nothing read back warns
    if args.one is not None:
        result = asyncio.run(one(int(args.one[0]), args.one[1], args.window_s))
        print(json.dumps(result), flush=True)
        return 0
    for state in args.states:
        for size in args.sizes:
            command = [sys.executable, "-m", "bench.reconcile_hold", "--one", str(size), state]
            command += ["--window-s", str(args.window_s)]
            subprocess.run(command, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
