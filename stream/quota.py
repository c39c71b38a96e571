"""When an account may send: rolling-window slots and one lane per account (docs/design.md#quota).

A lane holds an account's batches waiting for a slot, in two queues (high priority first), and its
``Slots``: at most ``rate`` requests in any rolling window. When replicas together exceed the
account's quota the API answers 429; a lane then halves its rate (not below a tenth of
``DCR_RATE_LIMIT_RPS``) and, once ``_RECOVERY_S`` passed without a 429, gives back a twentieth of it
per accepted request (AIMD). The lane does not send: ``stream.delivery`` runs one dispatcher task
per lane that takes a slot and only then picks the batch, so a high-priority batch that arrives
while normal ones wait gets the very next slot.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Generic, TypeVar

from stream.batching import Batch

__all__ = ["Lane", "Slots"]

S = TypeVar("S")

_WINDOW_MARGIN = 1.02
"""A lane's rolling window is 2% longer than the API's second (see ``Slots``)."""
_MIN_GAP = 0.8
"""Requests are never closer than 0.8 of the mean spacing (see ``Slots``)."""
_MAX_WINDOW_REQUESTS = 1000
"""Above this many requests per second the window is shortened to hold this many, so that its log
stays small when the quota is set out of the way (``DCR_RATE_LIMIT_RPS=1000000``)."""

_DECREASE = 0.5
_FLOOR = 0.1
_INCREASE = 0.05
_RECOVERY_S = 5.0
"""Adaptive rate after 429s: halved per 429, never below a tenth of the configured rate; after 5 s
without a 429, a twentieth of the configured rate back per accepted request."""


class Slots:
    """When a lane may send: at most ``n`` requests in any rolling ``window_s``, ``n / window_s``
    being the rate less 2%, and never two closer than ``gap_s``.

    The API counts requests in a rolling second, and so does this: for a whole-number rate,
    ``n = rps`` and the window is 1.02 s, so any ``rps + 1`` consecutive requests span more than a
    second, with 20 ms to spare for requests that arrive bunched up against how they were sent (the
    loop, the network, the API's own scheduling). Spacing every request ``1.02/rps`` apart would
    guarantee the same, but every delay in sending one (the loop is busy) would then push all the
    later ones back too, and those delays add up to several percent of the quota (``bench/`` B2);
    here a late request only moves the one ``n`` places after it. The gap, 0.8 of the mean
    spacing, keeps a lane that was idle from opening with a burst.
    """

    def __init__(self, rps: float, sent: deque[float] | None = None) -> None:
        self.n = max(1, min(_MAX_WINDOW_REQUESTS, math.floor(rps)))
        self.window_s = _WINDOW_MARGIN * self.n / rps
        self.gap_s = _MIN_GAP * self.window_s / self.n
        self.sent: deque[float] = sent if sent is not None else deque()
        """Loop times of the requests sent within the last window, oldest first."""

    def wait_s(self, now: float) -> float:
        """How long from ``now`` until the next request may go."""
        sent = self.sent
        while sent and sent[0] <= now - self.window_s:
            sent.popleft()
        if not sent:
            return 0.0
        ready = sent[-1] + self.gap_s
        if len(sent) >= self.n:
            ready = max(ready, sent[-self.n] + self.window_s)
        return max(0.0, ready - now)

    async def acquire(self) -> None:
        """Wait for the next slot and take it (a sleep never ends early: one wait is enough)."""
        loop = asyncio.get_running_loop()
        wait_s = self.wait_s(loop.time())
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        self.sent.append(loop.time())


class Lane(Generic[S]):
    """One account's queues, slots and dispatcher."""

    def __init__(self, rps: float) -> None:
        self.max_rps = rps
        self.rps = rps
        self.slots = Slots(rps)
        self.last_throttle = -_RECOVERY_S
        self.high: deque[Batch[S]] = deque()
        self.normal: deque[Batch[S]] = deque()
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def throttled(self, now: float) -> None:
        self.last_throttle = now
        self._set(max(self.max_rps * _FLOOR, self.rps * _DECREASE))

    def accepted(self, now: float) -> None:
        if self.rps < self.max_rps and now - self.last_throttle >= _RECOVERY_S:
            self._set(min(self.max_rps, self.rps + self.max_rps * _INCREASE))

    def _set(self, rps: float) -> None:
        if rps != self.rps:
            self.rps = rps
            # The requests already sent still count against the new rate's window.
            self.slots = Slots(rps, self.slots.sent)

    def put(self, batch: Batch[S], *, front: bool = False) -> None:
        queue = self.high if batch.high_priority else self.normal
        if front:
            queue.appendleft(batch)
        else:
            queue.append(batch)
        self.ready.set()
