"""Many things that wait for a time, at a cost that does not grow with how many wait
(docs/design.md#reconciliation): ``DueQueue`` wakes each when it is due under one loop timer,
``Oldest`` counts them and knows the oldest."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["DueQueue", "Oldest"]

T = TypeVar("T")


class DueQueue(Generic[T]):
    """Items waiting until a wall-clock time (milliseconds), in one heap under one timer:
    ``on_due`` gets each once it is due, and no item costs a task or a timer of its own."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        wall_ms: Callable[[], int],
        on_due: Callable[[T], None],
    ) -> None:
        self._loop = loop
        self._wall_ms = wall_ms
        self._on_due = on_due
        self._heap: list[tuple[int, int, T]] = []
        """By when each is due, then in the order pushed."""
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_ms = 0
        """When ``_timer`` goes off."""
        self._closed = False

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, due_ms: int, item: T) -> None:
        heapq.heappush(self._heap, (due_ms, next(self._order), item))
        self._arm()

    def remove(self, gone: Callable[[T], bool]) -> list[T]:
        """Take out the items ``gone`` says so of, and return them."""
        kept: list[tuple[int, int, T]] = []
        removed: list[tuple[int, int, T]] = []
        for entry in self._heap:
            (removed if gone(entry[2]) else kept).append(entry)
        heapq.heapify(kept)
        self._heap = kept
        return [entry[2] for entry in removed]

    def close(self) -> list[T]:
        """No item is due any more; return those that waited."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        return self.remove(lambda _: True)

    def _arm(self) -> None:
        """Have ``_wake`` called when the first item is due (one timer for them all)."""
        if not self._heap or self._closed:
            return
        due_ms = self._heap[0][0]
        if self._timer is not None:
            if self._timer_ms <= due_ms:
                return
            self._timer.cancel()
        self._timer_ms = due_ms
        delay_s = max(0.0, (due_ms - self._wall_ms()) / 1000)
        self._timer = self._loop.call_later(delay_s, self._wake)

    def _wake(self) -> None:
        """Hand over the items now due, and only those."""
        self._timer = None
        now_ms = self._wall_ms()
        while self._heap and self._heap[0][0] <= now_ms:
            self._on_due(heapq.heappop(self._heap)[2])
        self._arm()


class Oldest:
    """How many times are held and the oldest of them, in O(log n) amortised (a scrape used to
    visit every one): a count per time and a heap of them, from which a time no longer held is
    dropped when it comes to the top."""

    __slots__ = ("_heap", "_times", "count")

    def __init__(self) -> None:
        self._times: dict[int, int] = {}
        """Time → how many are held at it."""
        self._heap: list[int] = []
        """The keys of ``_times``, and times no longer held not yet dropped."""
        self.count = 0

    def add(self, time: int) -> None:
        held = self._times.get(time, 0)
        if held == 0:
            heapq.heappush(self._heap, time)
        self._times[time] = held + 1
        self.count += 1

    def remove(self, time: int) -> None:
        held = self._times.pop(time)
        if held > 1:
            self._times[time] = held - 1
        self.count -= 1
        if len(self._heap) > 2 * len(self._times) + 64:
            # Mostly times no longer held (behind an old one that stays): start again from those
            # held, so the heap stays within twice their number.
            self._heap = list(self._times)
            heapq.heapify(self._heap)

    def oldest(self) -> int | None:
        heap = self._heap
        while heap and heap[0] not in self._times:
            heapq.heappop(heap)
        return heap[0] if heap else None
