"""Batches of records per (account, priority), flushed by count, age or size (docs/design.md).

The batcher is a plain data structure: it never sleeps and never sends. Its owner
(``stream.delivery``) asks it for full batches as records arrive and for the batches whose oldest
record has waited ``linger_s`` whenever the timer it arms from :meth:`Batcher.next_deadline` fires.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from msgspec import Struct

from stream.events import Record

if TYPE_CHECKING:
    from stream.wire import Response

__all__ = ["Batch", "Batcher", "Pending", "Urgent", "record_size"]

S = TypeVar("S")

_RECORD_OVERHEAD = 160
"""Bytes a wire record adds beyond its variable strings: keys, quotes, two 13-digit timestamps."""


def record_size(record: Record) -> int:
    """An upper bound of the record's bytes in a request body, without encoding it (the same sum
    is inlined in ``Batcher.add_all``)."""
    return (
        _RECORD_OVERHEAD
        + len(record.caller)
        + len(record.receiver)
        + len(record.label_id)
        # Non-ASCII characters take up to 4 bytes in UTF-8 (msgspec does not escape them).
        + 4 * len(record.label_name or "")
        + 4 * len(record.call_reason or "")
    )


class Pending(Struct, Generic[S], gc=False):
    """A record on its way to the API, with the caller's handle on where it came from.

    One per record, hence ``gc=False`` (docs/design.md#the-hot-path): a source must not refer back
    to its ``Pending``.
    """

    record: Record
    source: S
    """Opaque to delivery: the pipeline keeps the Kafka message here (DLQ, offsets)."""


@dataclass(slots=True)
class Batch(Generic[S]):
    """Records for one account and one priority; one request (or, bisected, several)."""

    account: str
    high_priority: bool
    items: list[Pending[S]] = field(default_factory=list)
    size: int = 0
    opened_at: float = 0.0
    """The batcher's clock when the oldest record arrived."""
    attempt: int = 0
    """Transient failures so far; drives the backoff."""
    auth_403: bool = False
    """A 403 was already answered with a fresh token once (docs/design.md#auth: a 403 is retried
    once)."""
    probe: asyncio.Future[Response | None] | None = None
    """Set for a probe (``Delivery.probe``): it learns the answer; a refusal is its to handle."""
    bisected: bool = False
    """A half of a refused request (docs/design.md#rejection): it is never joined with others."""
    single: bool = False
    """One record the single-record endpoint accepted (docs/design.md#real-time): final at its
    2xx, there is no batch status to ask for."""


@dataclass(slots=True)
class Urgent(Generic[S]):
    """A record on its way to the single-record endpoint (docs/design.md#real-time): one request,
    retried like a batch."""

    item: Pending[S]
    at: float
    """The loop's clock when it was submitted (consume to acceptance, a metric)."""
    attempt: int = 0
    """Transient failures so far; drives the backoff."""
    auth_403: bool = False
    """A 403 was already answered with a fresh token once."""


class Batcher(Generic[S]):
    """Open batches keyed by (account, high priority); at most one open batch per key."""

    def __init__(self, *, max_records: int, linger_s: float, max_bytes: int) -> None:
        if not 1 <= max_records <= 500:
            raise ValueError("max_records must be 1..500 (the API's limit)")
        self._max_records = max_records
        self._linger_s = linger_s
        self._max_bytes = max_bytes
        self._open: dict[tuple[str, bool], Batch[S]] = {}

    def __len__(self) -> int:
        """Records held in open batches."""
        return sum(len(b.items) for b in self._open.values())

    def __bool__(self) -> bool:
        """Whether any batch is open (cheaper than ``len``: an open batch is never empty)."""
        return bool(self._open)

    def add(self, item: Pending[S], now: float) -> Batch[S] | None:
        """Add one record; return a batch that is now complete (by count or by bytes), if any.

        A record that would push its batch past ``max_bytes`` closes that batch and opens the next.
        """
        full = self.add_all((item,), now)
        # One record completes at most one batch: a batch left open holds fewer than
        # max_records >= 2 records, so the one opened beside a closed one cannot be full yet.
        return full[0] if full else None

    def add_all(self, items: Iterable[Pending[S]], now: float) -> list[Batch[S]]:
        """``add`` each record, in order, in one loop (docs/design.md#the-hot-path); return the
        batches they completed, in the order they were completed."""
        full: list[Batch[S]] = []
        batches, max_records, max_bytes = self._open, self._max_records, self._max_bytes
        for item in items:
            record = item.record
            key = (record.account, record.high_priority)
            # record_size(record), inline: a call per record was an eighth of the hot path.
            size = (
                _RECORD_OVERHEAD
                + len(record.caller)
                + len(record.receiver)
                + len(record.label_id)
                + 4 * len(record.label_name or "")
                + 4 * len(record.call_reason or "")
            )
            batch = batches.get(key)
            if batch is not None and batch.size + size > max_bytes:
                full.append(batches.pop(key))
                batch = None
            if batch is None:
                batch = batches[key] = Batch(key[0], key[1], opened_at=now)
            batch.items.append(item)
            batch.size += size
            if len(batch.items) >= max_records:
                full.append(batches.pop(key))
        return full

    def holds(self, account: str, high_priority: bool) -> bool:
        """Whether a batch is open for (``account``, ``high_priority``)."""
        return (account, high_priority) in self._open

    def open_high(self) -> list[str]:
        """The accounts with an open high-priority batch."""
        return [account for account, high in self._open if high]

    def take(self, account: str, high_priority: bool) -> Batch[S] | None:
        """Remove and return the open batch of (``account``, ``high_priority``), however young: a
        high-priority batch leaves with the next free slot (docs/design.md#real-time)."""
        return self._open.pop((account, high_priority), None)

    def due(self, now: float) -> list[Batch[S]]:
        """Remove and return the batches whose oldest record has waited ``linger_s``."""
        keys = [k for k, b in self._open.items() if b.opened_at + self._linger_s <= now]
        return [self._open.pop(k) for k in keys]

    def next_deadline(self) -> float | None:
        """When the oldest open batch becomes due; None when nothing is open."""
        if not self._open:
            return None
        return min(b.opened_at for b in self._open.values()) + self._linger_s

    def join(self, into: Batch[S], batch: Batch[S]) -> bool:
        """Add ``batch``'s records to ``into`` when both fit one request (count and bytes); whether
        they did. Neither may be a probe, a bisected half or waiting out a failure
        (docs/design.md#batching)."""
        if (
            not (_joinable(into) and _joinable(batch))
            or batch.high_priority != into.high_priority
            or len(into.items) + len(batch.items) > self._max_records
            or into.size + batch.size > self._max_bytes
        ):
            return False
        into.items.extend(batch.items)
        into.size += batch.size
        return True

    def drain(self) -> list[Batch[S]]:
        """Remove and return every open batch (shutdown, revoke)."""
        batches = list(self._open.values())
        self._open.clear()
        return batches


def _joinable(batch: Batch[S]) -> bool:
    """Whether ``batch`` may go in one request with other records (``Batcher.join``)."""
    return not (
        batch.attempt or batch.auth_403 or batch.bisected or batch.single or batch.probe is not None
    )
