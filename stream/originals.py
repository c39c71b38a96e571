"""Reading input records back at the offsets a receipt names (docs/design.md#reconciliation), so
that a status dead letter is the original message, key, value and headers, byte for byte.

``OriginalReader`` is a consumer of no group's: it assigns and seeks, never commits, and reads one
batch's offsets at a time on a worker thread (a few milliseconds each). An offset deleted by
retention is left out after ``_READ_IDLE_S`` without a message. A read stuck far beyond that, or
reads that keep raising, make the reader dead for liveness (docs/operations.md#health).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from stream.offsets import TopicPartitionKey

__all__ = ["OriginalReader"]

_log = logging.getLogger("stream.originals")

_READ_IDLE_S = 10.0
"""Reading originals gives up on offsets not seen for this long (deleted by retention)."""

_READ_POLL_S = 0.05
"""The longest a read waits for the next fetched message before it looks again."""

_READ_STUCK_S = 120.0
"""A read of originals running this long is stuck (it gives up after ``_READ_IDLE_S`` without a
message, and a batch's records span far fewer offsets than it reads meanwhile): liveness fails."""

_READ_FAILURES_DEAD = 5
"""Reads of originals that raise in a row after which the reader counts as dead (its consumer
broken for good): liveness fails, and a restart makes a new one."""


class OriginalReader:
    """Reads input records back at given offsets: a consumer of no group's (assign and seek, never
    a commit), one read at a time on a worker thread."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._consumer = Consumer(
            {
                **config,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                # The records asked for exist: a fetch need not wait for more to arrive.
                "fetch.wait.max.ms": 10,
            }
        )
        self._lock = asyncio.Lock()
        self._reading = threading.Lock()
        """Held by the thread that reads: a read cancelled on the loop goes on until it sees
        ``_closed``, and the consumer is closed only after it."""
        self._closed = False
        self._reading_since: float | None = None
        """Monotonic time the read in progress started; None between reads."""
        self._failures = 0
        """Reads that raised in a row."""

    def __repr__(self) -> str:
        return "OriginalReader()"

    @property
    def alive(self) -> bool:
        """False while a read is stuck (``_READ_STUCK_S``) or after ``_READ_FAILURES_DEAD`` reads
        raised in a row (liveness: docs/operations.md#health)."""
        since = self._reading_since
        stuck = since is not None and time.monotonic() - since > _READ_STUCK_S
        return not stuck and self._failures < _READ_FAILURES_DEAD

    async def read(self, positions: Iterable[tuple[str, int, int]]) -> list[Message]:
        """The records at ``positions``, in the order given; any that could not be read (deleted
        by retention) are left out."""
        wanted = list(positions)
        async with self._lock:
            found = await asyncio.to_thread(self._read, wanted)
        return [found[p] for p in wanted if p in found]

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._reading, contextlib.suppress(Exception):
            self._consumer.close()

    def _read(self, wanted: list[tuple[str, int, int]]) -> dict[tuple[str, int, int], Message]:
        with self._reading:
            if self._closed:
                return {}
            self._reading_since = time.monotonic()
            try:
                found = self._read_held(wanted)
            except Exception:
                self._failures += 1
                raise
            finally:
                self._reading_since = None
            self._failures = 0
            return found

    def _read_held(self, wanted: list[tuple[str, int, int]]) -> dict[tuple[str, int, int], Message]:
        want = set(wanted)
        bounds: dict[TopicPartitionKey, tuple[int, int]] = {}
        for topic, partition, offset in wanted:
            low, high = bounds.get((topic, partition), (offset, offset))
            bounds[(topic, partition)] = (min(low, offset), max(high, offset))
        self._consumer.assign([TopicPartition(t, p, low) for (t, p), (low, _) in bounds.items()])
        found: dict[tuple[str, int, int], Message] = {}
        open_ = set(bounds)
        idle_since = time.monotonic()
        while open_ and not self._closed and time.monotonic() - idle_since < _READ_IDLE_S:
            for message in self._fetched():
                topic, partition = message.topic() or "", message.partition() or 0
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        open_.discard((topic, partition))
                    else:
                        _log.warning("reading originals: %s", error)
                    continue
                idle_since = time.monotonic()
                position = (topic, partition, message.offset() or 0)
                if position in want:
                    found[position] = message
                if position[2] >= bounds[(topic, partition)][1]:
                    open_.discard((topic, partition))
        self._consumer.unassign()
        return found

    def _fetched(self) -> list[Message]:
        """What has arrived, else the first message within a short wait: ``consume(n, t)`` would
        wait for ``n`` messages or all of ``t`` (see ``stream.consumer``)."""
        messages = self._consumer.consume(500, 0)
        if messages:
            return messages
        first = self._consumer.poll(_READ_POLL_S)
        return [] if first is None else [first, *self._consumer.consume(499, 0)]
