"""Where an account's requests wait for a token (docs/design.md#quota, docs/design.md#real-time).

A ``Lane`` holds an account's batches waiting for a slot, in two queues (high priority first), and
optionally ``DCR_RATE_LIMIT_RPS`` as a cap on the whole account (``stream.pacing.Slots``). The lane
does not send: ``stream.delivery`` runs one dispatcher task per lane that takes the token whose next
slot comes first, and only then picks the batch, so a high-priority batch that arrives while normal
ones wait gets the very next slot. A ``RealtimeLane`` holds the account's urgent records for the
single-record endpoint (``stream.realtime``), with a pace per token of its own. Both dispatchers
wait for a token's slot with :func:`first_free`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from stream.batching import Batch, Urgent
from stream.held import Held
from stream.pacing import Pace, Slots
from stream.pool import TokenPool

__all__ = ["Lane", "RealtimeLane", "first_free", "restarting"]

_log = logging.getLogger("stream.lanes")

S = TypeVar("S")
T = TypeVar("T")

_EXPIRY_CHECK_S = 1.0
"""How often records waiting for a token or a slot are checked for a closed window."""
_RESTART_S = 1.0
"""How soon a dispatcher that failed runs again."""


class Lane(Generic[S]):
    """One account's queues, its optional cap and its dispatcher.

    A batch put in a queue joins its neighbour there when both fit one request (``join``: the
    last one for a batch put at the back, the first one for a batch put back at the front): an
    account whose batches close faster than its tokens' pace sends fewer, fuller requests, and a
    second batch waits only when more than a full request does (docs/design.md#batching).
    """

    def __init__(
        self, rps: float | None, join: Callable[[Batch[S], Batch[S]], bool] | None = None
    ) -> None:
        self.rps = rps
        """``DCR_RATE_LIMIT_RPS``; None: no cap on the account (only its tokens' paces)."""
        self.cap = Slots(rps) if rps is not None else None
        self.high: deque[Batch[S]] = deque()
        self.normal: deque[Batch[S]] = deque()
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._join = join

    def put(self, batch: Batch[S], *, front: bool = False) -> None:
        queue = self.high if batch.high_priority else self.normal
        join = self._join
        if front:
            if queue and join is not None and join(batch, queue[0]):
                queue[0] = batch
            else:
                queue.appendleft(batch)
        elif not (queue and join is not None and join(queue[-1], batch)):
            queue.append(batch)
        self.ready.set()


class RealtimeLane(Generic[S]):
    """One account's urgent records waiting for the single-record endpoint, and each token's pace
    on it (docs/design.md#real-time).

    That endpoint has a limit of its own, per token and per second, apart from the batch pace: each
    token gets a second ``Pace`` here, made the first time the token is used for a record. At most
    ``capacity`` records wait (what the tokens held can send within about a second); the rest
    overflow to the account's high-priority batch.
    """

    def __init__(self, rps: float) -> None:
        self.rps = rps
        """``DCR_REALTIME_REQUESTS_PER_SECOND``: per token (a static token's share of it, when
        several slots share one)."""
        self.capacity = rps
        """Records that may wait: a second's worth of the tokens last seen (one token's before)."""
        self.queue: deque[Urgent[S]] = deque()
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._paces: dict[int, tuple[object, float, Pace]] = {}

    def pace(self, index: int, token: object, share: float) -> Pace:
        """The real-time pace of the token held as ``index``: a new one when another token (or
        another share of it) is held there now."""
        known = self._paces.get(index)
        if known is not None and known[0] is token and known[1] == share:
            return known[2]
        pace = Pace(Slots(self.rps * share))
        self._paces[index] = (token, share, pace)
        return pace

    def size(self, tokens: float) -> None:
        """The tokens held now (static tokens' shares summed) set how many records may wait."""
        self.capacity = max(self.rps, self.rps * tokens)

    def room(self) -> bool:
        return len(self.queue) < self.capacity

    def put(self, urgent: Urgent[S], *, front: bool = False) -> None:
        if front:
            self.queue.appendleft(urgent)
        else:
            self.queue.append(urgent)
        self.ready.set()


async def first_free(
    pool: TokenPool,
    pick: Callable[[list[Held], float], tuple[float, T]],
    waiting: Callable[[], None],
) -> T | None:
    """Wait until ``pick`` finds a free slot among the pool's usable tokens (it takes the slot and
    returns 0, or returns how long until one frees up), and return what it picked. None when the
    pool has no token because getting one fails (``TokenPool.failing``) or the account is given up
    on (``TokenPool.given_up``). While it waits, ``waiting`` runs about once a second (records whose
    window closed meanwhile leave)."""
    loop = asyncio.get_running_loop()
    checked = loop.time()
    while True:
        now = loop.time()
        usable = pool.usable()
        if not usable and (pool.failing is not None or pool.given_up()):
            return None
        if usable:
            wait_s, picked = pick(usable, now)
            if wait_s <= 0:
                return picked
        else:
            pool.want_more()
            wait_s = 1.0
        if now - checked >= _EXPIRY_CHECK_S:
            checked = now
            waiting()
        # A sleep never ends early; a token that becomes usable meanwhile wakes it.
        pool.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pool.changed.wait(), min(wait_s, _EXPIRY_CHECK_S))


async def restarting(run: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``run`` until it returns; when it raises (a bug), log why and run it again a second
    later. A dispatcher that died would leave its account's records waiting with nothing to send
    or expire them, and their partitions uncommitted (docs/design.md#bounded-progress); what it
    works on lives in its lane, so it starts again where it was."""
    while True:
        try:
            await run()
            return
        except Exception:
            _log.exception("%s failed; it runs again in %.0f s", what, _RESTART_S)
        await asyncio.sleep(_RESTART_S)
