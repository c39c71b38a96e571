"""Which offsets may be committed: each partition's finished prefix (docs/design.md#at-least-once).

A record is *finished* when the API accepted it or Kafka acknowledged its dead-letter copy. Records
finish out of order (batches per account, retries, bisection); the committable position of a
partition is one past the last record of the longest finished prefix of what was received, in the
order it was received (offsets need not be contiguous: compaction, transaction markers).

Offsets are received a run at a time: the messages of one partition that arrived together (a
consumed slice holds a few). A :class:`Run` keeps their offsets and one byte per record, set when
it finishes, so that the finished prefix advances with ``bytearray.find`` rather than record by
record (docs/design.md#the-hot-path).

Each run is stamped with the (monotonic) time it was received, once for all its records, so the age
of a partition's oldest unfinished record, the first unfinished one of its first run, costs nothing
on the hot path: ``oldest`` reads it for the gauge and ``stalls`` for the warning of a partition
stuck longer than ``DCR_STUCK_WARN_S`` (docs/design.md#bounded-progress).

Each assignment of a partition starts with no runs, so a result that arrives after the partition
was revoked (or lost, or revoked and assigned again) marks a run that is no longer tracked and is
ignored instead of moving someone else's position.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from msgspec import Struct

__all__ = ["OffsetTracker", "Run", "Stall", "Ticket", "TopicPartitionKey"]

TopicPartitionKey = tuple[str, int]


class Run:
    """Records of one partition received together, in order; see the module docstring."""

    __slots__ = ("done", "head", "live", "offsets", "received_at", "tp")

    def __init__(self, tp: TopicPartitionKey, offsets: list[int], received_at: float) -> None:
        self.tp = tp
        self.live = True
        """False once its partition is being revoked (or was lost): its records not yet on their
        way are not sent (``OffsetTracker.leave``)."""
        self.offsets = offsets
        self.received_at = received_at
        """Monotonic seconds when the run was received."""
        self.done = bytearray(len(offsets))
        """1 for each record finished."""
        self.head = 0
        """Records at the front that are part of the partition's finished prefix."""


class Ticket(Struct, frozen=True, gc=False):
    """A received record's claim on its partition's position: its run and its place in it; one
    per record, hence ``gc=False`` (docs/design.md#the-hot-path)."""

    run: Run
    index: int

    @property
    def tp(self) -> TopicPartitionKey:
        return self.run.tp

    @property
    def offset(self) -> int:
        return self.run.offsets[self.index]


@dataclass(slots=True)
class _Partition:
    runs: deque[Run] = field(default_factory=deque)
    """Runs received and not yet wholly part of the finished prefix, in order."""
    position: int | None = None
    """One past the finished prefix: what a commit would store; None until something finished."""
    committed: int | None = None
    prefix: int = 0
    """Records that joined the finished prefix since the partition was assigned."""
    prefix_committed: int = 0
    """Of those, the records at or before ``committed``."""
    offered: tuple[int, int] = (-1, 0)
    """The last ``position`` that ``to_commit`` handed out, and ``prefix`` then."""
    stalled: bool = False
    """``stalls`` reported this partition, and it has not moved on since."""
    leaving: bool = False
    """Being revoked (``OffsetTracker.leave``): nothing more is received for it."""

    def advance(self) -> None:
        """Move the finished prefix over the records finished at the front."""
        runs = self.runs
        while runs:
            run = runs[0]
            end = run.done.find(0, run.head)
            if end == -1:
                end = len(run.offsets)
            if end > run.head:
                self.prefix += end - run.head
                self.position = run.offsets[end - 1] + 1
                run.head = end
            if end < len(run.offsets):
                return
            runs.popleft()


@dataclass(frozen=True, slots=True)
class Stall:
    """A partition whose oldest unfinished record has waited longer than the threshold."""

    tp: TopicPartitionKey
    offset: int
    """The oldest unfinished record: the partition's commits cannot pass it."""
    age_s: float


class OffsetTracker:
    """Positions of the partitions this process owns now; ``clock`` (monotonic seconds) stamps
    each run received."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._partitions: dict[TopicPartitionKey, _Partition] = {}
        self._clock = clock

    def assign(self, tps: Iterable[TopicPartitionKey]) -> None:
        for tp in tps:
            self._partitions[tp] = _Partition()

    def leave(self, tps: Iterable[TopicPartitionKey]) -> None:
        """A revoke begins: the partitions' runs are no longer live, so their records not yet on
        their way to the API stay unsent (the next owner reads them again), and records of theirs
        consumed before the revoke but not yet received are not received. Their finished prefix
        still moves until ``forget`` (docs/design.md#rebalances)."""
        for tp in tps:
            state = self._partitions.get(tp)
            if state is not None:
                state.leaving = True
                for run in state.runs:
                    run.live = False

    def forget(self, tps: Iterable[TopicPartitionKey]) -> None:
        """Drop partitions (revoked after their final commit, or lost); late results are ignored."""
        for tp in tps:
            state = self._partitions.pop(tp, None)
            if state is not None:
                for run in state.runs:
                    run.live = False

    def receive_run(self, topic: str, partition: int, offsets: list[int]) -> Run | None:
        """Note records of one partition consumed together (offsets in order); None if the
        partition is not (or no longer) ours. Record ``i`` is ``Ticket(run, i)``."""
        tp = (topic, partition)
        state = self._partitions.get(tp)
        if state is None or state.leaving:
            return None
        run = Run(tp, offsets, self._clock())
        state.runs.append(run)
        return run

    def receive(self, topic: str, partition: int, offset: int) -> Ticket | None:
        """Note one consumed record; None if the partition is not (or no longer) ours."""
        run = self.receive_run(topic, partition, [offset])
        return None if run is None else Ticket(run, 0)

    def tracks(self, run: Run) -> bool:
        """Whether ``run`` is of the current assignment of its partition and not yet wholly
        finished: false once the partition was revoked or lost, even if it came back."""
        state = self._partitions.get(run.tp)
        return state is not None and any(r is run for r in state.runs)

    def finish(self, ticket: Ticket) -> None:
        self.finish_all((ticket,))

    def finish_all(self, tickets: Iterable[Ticket]) -> None:
        """Records finished (in any order); each partition's prefix advances once."""
        touched: list[Run] = []
        last = None
        for ticket in tickets:
            run = ticket.run
            run.done[ticket.index] = 1
            if run is not last:
                touched.append(run)
                last = run
        partitions = self._partitions
        for tp in {run.tp for run in touched}:
            state = partitions.get(tp)
            if state is not None:
                state.advance()

    def unfinished(self, tps: Iterable[TopicPartitionKey] | None = None) -> int:
        """Records received and not yet in a finished prefix (of the given partitions, or all)."""
        keys = self._partitions.keys() if tps is None else tps
        return sum(_unfinished(s) for tp in keys if (s := self._partitions.get(tp)) is not None)

    def oldest(self) -> dict[TopicPartitionKey, float]:
        """Per partition owned, the age in seconds of its oldest unfinished record; 0 for none."""
        now = self._clock()
        return {
            tp: now - state.runs[0].received_at if state.runs else 0.0
            for tp, state in self._partitions.items()
        }

    def stalls(self, threshold_s: float) -> tuple[list[Stall], list[TopicPartitionKey]]:
        """The partitions whose oldest unfinished record became older than ``threshold_s`` since
        the last call, and those that moved on since they were reported: each stall is reported
        once, however long it lasts."""
        now = self._clock()
        started: list[Stall] = []
        ended: list[TopicPartitionKey] = []
        for tp, state in self._partitions.items():
            # ``advance`` drops a run once it is finished: the first one holds the oldest record.
            run = state.runs[0] if state.runs else None
            age_s = 0.0 if run is None else now - run.received_at
            if run is not None and age_s > threshold_s and not state.stalled:
                state.stalled = True
                started.append(Stall(tp, run.offsets[run.head], age_s))
            elif age_s <= threshold_s and state.stalled:
                state.stalled = False
                ended.append(tp)
        return started, ended

    def uncommitted(self) -> int:
        """Records received and not yet committed: what the partitions' next owner consumes again
        if we stop now."""
        return sum(
            _unfinished(s) + s.prefix - s.prefix_committed for s in self._partitions.values()
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


def _unfinished(state: _Partition) -> int:
    return sum(len(run.offsets) - run.head for run in state.runs)
