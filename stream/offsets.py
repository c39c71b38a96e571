"""Which offsets may be committed: each partition's finished prefix (docs/design.md#at-least-once).

A record is *finished* when the API accepted it or Kafka acknowledged its dead-letter copy. Records
finish out of order (batches per account, retries, bisection); the committable position of a
partition is one past the last record of the longest finished prefix of what was received, in the
order it was received (offsets need not be contiguous: compaction, transaction markers).

Each assignment of a partition gets a new generation. A record carries the generation it was
received under, so a result that arrives after the partition was revoked (or lost, or revoked and
assigned again) is ignored instead of moving someone else's position.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from msgspec import Struct

__all__ = ["OffsetTracker", "Ticket", "TopicPartitionKey"]

TopicPartitionKey = tuple[str, int]


class Ticket(Struct, frozen=True, gc=False):
    """A received record's claim on its partition's position; one per record, hence ``gc=False``
    (docs/design.md#the-hot-path)."""

    tp: TopicPartitionKey
    generation: int
    offset: int


@dataclass(slots=True)
class _Partition:
    generation: int
    received: deque[int] = field(default_factory=deque)
    """Offsets received and not yet part of the finished prefix, in order."""
    finished: set[int] = field(default_factory=set)
    """Offsets finished out of order, waiting for the ones before them."""
    position: int | None = None
    """One past the finished prefix: what a commit would store; None until something finished."""
    committed: int | None = None
    prefix: int = 0
    """Records that joined the finished prefix since the partition was assigned."""
    prefix_committed: int = 0
    """Of those, the records at or before ``committed``."""
    offered: tuple[int, int] = (-1, 0)
    """The last ``position`` that ``to_commit`` handed out, and ``prefix`` then."""


class OffsetTracker:
    """Positions of the partitions this process owns now."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartitionKey, _Partition] = {}
        self._generations = itertools.count(1)

    def assign(self, tps: Iterable[TopicPartitionKey]) -> None:
        for tp in tps:
            self._partitions[tp] = _Partition(next(self._generations))

    def forget(self, tps: Iterable[TopicPartitionKey]) -> None:
        """Drop partitions (revoked after their final commit, or lost); late results are ignored."""
        for tp in tps:
            self._partitions.pop(tp, None)

    def receive(self, topic: str, partition: int, offset: int) -> Ticket | None:
        """Note a consumed record; None if the partition is not (or no longer) ours."""
        tp = (topic, partition)
        state = self._partitions.get(tp)
        if state is None:
            return None
        state.received.append(offset)
        return Ticket(tp, state.generation, offset)

    def finish(self, ticket: Ticket) -> None:
        state = self._partitions.get(ticket.tp)
        if state is None or state.generation != ticket.generation:
            return
        received = state.received
        if received and received[0] == ticket.offset:
            received.popleft()
            last = ticket.offset
            finished = state.finished
            count = 1
            while received and received[0] in finished:
                last = received.popleft()
                finished.discard(last)
                count += 1
            state.position = last + 1
            state.prefix += count
        else:
            state.finished.add(ticket.offset)

    def unfinished(self, tps: Iterable[TopicPartitionKey] | None = None) -> int:
        """Records received and not yet in a finished prefix (of the given partitions, or all)."""
        keys = self._partitions.keys() if tps is None else tps
        return sum(len(s.received) for tp in keys if (s := self._partitions.get(tp)) is not None)

    def uncommitted(self) -> int:
        """Records received and not yet committed: what the partitions' next owner consumes again
        if we stop now."""
        return sum(
            len(s.received) + s.prefix - s.prefix_committed for s in self._partitions.values()
        )

    def to_commit(
        self, tps: Iterable[TopicPartitionKey] | None = None
    ) -> dict[TopicPartitionKey, int]:
        """Positions that moved since they were last committed."""
        keys = self._partitions.keys() if tps is None else tps
        positions: dict[TopicPartitionKey, int] = {}
        for tp in keys:
            state = self._partitions.get(tp)
            if state is None or state.position is None or state.position == state.committed:
                continue
            positions[tp] = state.position
            state.offered = (state.position, state.prefix)
        return positions

    def committed(self, positions: dict[TopicPartitionKey, int]) -> None:
        """Kafka accepted these positions (from ``to_commit``; the prefix may have grown since)."""
        for tp, position in positions.items():
            state = self._partitions.get(tp)
            if state is not None:
                state.committed = position
                if state.offered[0] == position:
                    state.prefix_committed = state.offered[1]
