"""The delivery engine: batches → requests under the quota, retried, bisected, reported.

Records enter with :meth:`Delivery.submit` and leave through the caller's
``stream.outcomes.Outcomes``: each one exactly once, as ``delivered`` (in the batch the API
accepted) or ``dead_letter`` (expired at send time, or refused on its own by the API). Transient
failures never leave: they are retried with capped, fully jittered exponential backoff for as long
as it takes (docs/design.md#retry); the caller applies backpressure meanwhile. What each answer
comes to is ``stream.outcomes``' to say, for batches and urgent records alike.

Per account there is one ``stream.lanes.Lane`` and one dispatcher task that takes a slot on the
token of the account's pool (``stream.tokens``) whose next slot comes first, and only then picks
the batch, so a high-priority batch that arrives while normal ones wait gets the very next slot
(docs/design.md#quota). Retries and bisected halves go back to the front of their queue and take
slots like any request. A 429 sends only its token away (it backs off); the request goes back to
the front at once, for the next token.

**Urgent records** (high priority, or ``starts_at`` less than ``urgent_within_s`` ahead) skip
batching when the real-time lane is on: ``Delivery`` routes them to its ``stream.realtime.Realtime``
engine, which sends each alone to the single-record endpoint (docs/design.md#real-time). What that
lane has no room for comes back as high-priority records, whose batch, like every high-priority
batch, does not linger: it leaves with the next free slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Generic, Literal, TypeVar

from stream.api import ApiClient
from stream.batching import Batch, Batcher, Pending
from stream.events import encode_batch
from stream.held import Held
from stream.lanes import Lane, first_free, restarting
from stream.metrics import Metrics
from stream.outcomes import AUTH_REFUSED, BATCH, Answers, Outcomes, Path, Request, api_rejection
from stream.pacing import Pace
from stream.pool import TokenPool
from stream.realtime import Realtime
from stream.retry import Backoff
from stream.tokens import Tokens
from stream.validation import Rejection, check_expiry
from stream.wire import Response

__all__ = ["AUTH_REFUSED", "Delivery", "Outcomes", "api_rejection"]

S = TypeVar("S")


class Delivery(Generic[S]):
    """Batches records, sends them under a per-account quota, retries, bisects, reports."""

    def __init__(
        self,
        *,
        client: ApiClient,
        tokens: Tokens,
        outcomes: Outcomes[S],
        version: Literal["v1", "v2"],
        max_records: int = 500,
        linger_s: float = 1.0,
        max_bytes: int = 1_000_000,
        rate_limit_rps: float | None = 10.0,
        backoff: Backoff | None = None,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        realtime_rps: float | None = None,
        urgent_within_s: float = 60.0,
    ) -> None:
        """``realtime_rps``: single-record requests per token and second
        (``DCR_REALTIME_REQUESTS_PER_SECOND``); None turns the real-time lane off
        (``DCR_REALTIME=off``) and every record is batched."""
        self._client = client
        self._tokens = tokens
        self._version = version
        self._batcher: Batcher[S] = Batcher(
            max_records=max_records, linger_s=linger_s, max_bytes=max_bytes
        )
        self._rps = rate_limit_rps
        self._wall_ms = wall_ms
        self._lanes: dict[str, Lane[S]] = {}
        self._wake = asyncio.Event()
        self._closed = False
        self._timer: asyncio.Task[None] | None = None
        self.metrics = metrics or Metrics()
        self._answers = Answers(
            outcomes=outcomes,
            metrics=self.metrics,
            backoff=backoff or Backoff(),
            rng=rng or random.Random(),
        )
        self._realtime: Realtime[S] | None = None
        if realtime_rps is not None:
            self._realtime = Realtime(
                client=client,
                tokens=tokens,
                answers=self._answers,
                version=version,
                rps=realtime_rps,
                urgent_within_s=urgent_within_s,
                wall_ms=wall_ms,
            )
            self._realtime.to_batches = self.submit_all

    # -- intake -----------------------------------------------------------------------------

    def submit(self, item: Pending[S]) -> None:
        """Add a record; it is sent when its batch is full, old enough or large enough."""
        self.submit_all((item,))

    def submit_all(self, items: Iterable[Pending[S]]) -> None:
        """Add records in order, as ``submit`` does, reading the clock once for all of them (the
        pipeline hands over each consumed slice in one call). The urgent ones go to the real-time
        lane instead, but for its overflow (docs/design.md#real-time)."""
        loop = asyncio.get_running_loop()
        if self._timer is None:
            self._timer = loop.create_task(restarting(self._linger, "the linger timer"))
        # The linger timer sleeps until the oldest open batch is due; only a first open batch
        # brings that deadline forward.
        was_empty = not self._batcher
        now = loop.time()
        if self._realtime is not None and not self._closed:
            items = self._realtime.route(items, now)
        for full in self._batcher.add_all(items, now):
            self._dispatch(full)
        if was_empty:
            self._wake.set()
        for account in self._batcher.open_high() if not self._closed else ():
            self._lane(account).ready.set()  # a high-priority batch leaves with the next slot

    async def probe(self, item: Pending[S]) -> Response | None:
        """Send ``item`` alone, under the quota like any batch, and return the API's answer to it:
        2xx (the record is delivered as usual) or a refusal (400/413/422, which is the caller's
        to handle: nothing is dead-lettered or bisected). Transient failures are retried first.
        None when the record expired before it went (it was dead-lettered as such)."""
        record = item.record
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Response | None] = loop.create_future()
        probe = Batch(record.account, record.high_priority, [item], opened_at=loop.time())
        probe.probe = answer
        self._dispatch(probe)
        return await answer

    def rates(self) -> dict[str, float]:
        """Requests per second each account may send now: its tokens' paces (those not backing
        off), at most its cap (``DCR_RATE_LIMIT_RPS``)."""
        now = asyncio.get_running_loop().time()
        rates = {}
        for account, lane in self._lanes.items():
            held = self._tokens.pool(account).held.values()
            paced = [h.pace.slots for h in held if h.pace.blocked_until <= now]
            tokens_rps = sum(s.n / s.window_s for s in paced if s is not None)
            if any(s is None for s in paced):
                tokens_rps = math.inf
            rates[account] = min(tokens_rps, lane.rps if lane.rps is not None else math.inf)
        return {a: r for a, r in rates.items() if r != math.inf}

    @property
    def open_records(self) -> int:
        """Records still waiting in open batches."""
        return len(self._batcher)

    def drop_unowned(self) -> None:
        """Take the records of partitions being revoked (or lost) out of the queues: they are not
        sent (docs/design.md#consumer). Those in open batches or waiting out a retry are dropped
        when their request would go."""
        for lane in self._lanes.values():
            for queue in (lane.high, lane.normal):
                kept = [b for b in queue if self._keep_owned(b)]
                queue.clear()
                queue.extend(kept)
        if self._realtime is not None:
            self._realtime.drop_unowned()

    def sending_unowned(self) -> bool:
        """Whether requests on their way carry records of partitions being revoked."""
        return self._answers.sending_unowned()

    def _keep_owned(self, batch: Batch[S]) -> bool:
        """Drop ``batch``'s records that are no longer ours; whether any is left."""
        batch.items = self._answers.owned(batch.items)
        if not batch.items and batch.probe is not None and not batch.probe.done():
            batch.probe.set_result(None)  # (its asker may be gone: a stop cancels probes)
        return bool(batch.items)

    def flush_open(self) -> None:
        """Send every open batch now, however young (revoke, shutdown)."""
        for batch in self._batcher.drain():
            self._dispatch(batch)

    async def close(self) -> None:
        """Stop every task; unresolved records stay unresolved (their offsets are not committed),
        and so do records submitted later."""
        self._closed = True
        tasks = [t for t in (self._timer, *self._answers.tasks) if t is not None]
        tasks += [lane.task for lane in self._lanes.values() if lane.task is not None]
        if self._realtime is not None:
            tasks += self._realtime.tasks()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- lanes -------------------------------------------------------------------------------

    async def _linger(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            deadline = self._batcher.next_deadline()
            if deadline is None:
                await self._wake.wait()
                continue
            if deadline > loop.time():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
                continue
            for batch in self._batcher.due(loop.time()):
                self._dispatch(batch)

    def _dispatch(self, batch: Batch[S]) -> None:
        if not self._closed:
            self._lane(batch.account).put(batch)

    def _lane(self, account: str) -> Lane[S]:
        lane = self._lanes.get(account)
        if lane is None:
            lane = self._lanes[account] = Lane(self._rps, self._batcher.join)
            run = functools.partial(self._run_lane, account, lane)
            dispatcher = restarting(run, f"the dispatcher of account {account}")
            lane.task = asyncio.get_running_loop().create_task(dispatcher)
        return lane

    async def _run_lane(self, account: str, lane: Lane[S]) -> None:
        pool = self._tokens.pool(account)
        holds = self._batcher.holds
        answers = self._answers
        while True:
            while not (lane.high or lane.normal or holds(account, True)):
                lane.ready.clear()
                await lane.ready.wait()
            waited = time.monotonic()
            held = await self._take_slot(lane, pool, functools.partial(self._expire_queued, lane))
            self.metrics.limiter_wait.observe(time.monotonic() - waited)
            # High first: a queued one, else the open one however young (it does not linger).
            batch = lane.high.popleft() if lane.high else self._batcher.take(account, True)
            if batch is None and lane.normal:
                batch = lane.normal.popleft()
            if batch is not None:  # else the open high batch left meanwhile (a revoke's flush)
                request = _BatchRequest(batch, lane, pool, answers)
                answers.send(request, functools.partial(self._send, request, held))

    @staticmethod
    async def _take_slot(
        lane: Lane[S], pool: TokenPool, waiting: Callable[[], None]
    ) -> Held | None:
        """Wait for the first free slot on any token of the pool (and under the account's cap),
        and take it. When the tokens held are what holds sending back, the pool is asked for one
        more (minted tokens: demand decides how many are minted). None when the pool has no
        token because getting one fails (``TokenPool.failing``): the batch then fails as a
        request would, and is retried with backoff; or because the account is given up on
        (``TokenPool.given_up``). ``waiting`` runs while it waits."""

        def pick(usable: list[Held], now: float) -> tuple[float, Held]:
            held = min(usable, key=lambda h: h.pace.wait_s(now))
            token_wait_s = held.pace.wait_s(now)
            cap_wait_s = lane.cap.wait_s(now) if lane.cap is not None else 0.0
            # One more token helps when the tokens, not the cap, hold sending back; with sharing,
            # a token also waits for its next bucket, so only a queue behind the wait says so (an
            # account sending a batch a second would otherwise mint token after token).
            queued = len(lane.high) + len(lane.normal)
            if token_wait_s > cap_wait_s and (pool.sharing is None or queued > 1):
                pool.want_more()
            wait_s = max(token_wait_s, cap_wait_s)
            if wait_s <= 0:
                pool.used(held, now)
                if lane.cap is not None:
                    lane.cap.take(now)
            return wait_s, held

        return await first_free(pool, pick, waiting)

    def _expire_queued(self, lane: Lane[S]) -> None:
        """Records whose window closed while their batch waited for a token or a slot leave now,
        as dead letters: no wait outlives a record's ``ends_at`` (docs/design.md#bounded-progress).
        A probe whose record expired is answered None."""
        now_ms = self._wall_ms()
        for queue in (lane.high, lane.normal):
            if all(min(i.record.ends_at for i in b.items) >= now_ms for b in queue):
                continue
            kept = [b for b in queue if self._expire_items(b, now_ms)]
            queue.clear()
            queue.extend(kept)

    def _expire_items(self, batch: Batch[S], now_ms: int) -> bool:
        """Dead-letter ``batch``'s expired records; whether any record is left in it."""
        live, expired = _split_expired(batch.items, now_ms)
        for item, rejection in expired:
            self._answers.dead_letter_soon(item, rejection)
        batch.items = live
        if not live and batch.probe is not None:
            batch.probe.set_result(None)
        return bool(live)

    # -- one request -------------------------------------------------------------------------

    async def _send(self, request: _BatchRequest[S], held: Held | None) -> None:
        batch, pool = request.queued, request.pool
        if not self._keep_owned(batch):
            return
        live = await self._drop_expired(batch)
        if not live:
            if batch.probe is not None:
                batch.probe.set_result(None)
            return
        batch.items = live
        if held is None and pool.given_up():  # its records leave as dead letters, none waits
            for item in live:
                await self._answers.outcomes.dead_letter(item, AUTH_REFUSED, None, None)
            if batch.probe is not None:
                batch.probe.set_result(None)
            return
        if held is None:  # no token can be had: the request fails without going out
            self._answers.retry_later(request, Response(status=0, error=pool.failing))
            return
        if pool.sharing is not None and await pool.claim(held) > 0:
            request.requeue()  # another replica has this token's bucket: the next token
            return
        body = encode_batch([p.record for p in live], self._version)
        self.metrics.batch_size.observe(len(live))
        started = time.monotonic()
        response, _ = await self._client.post_batch(batch.account, body, held.token.reveal())
        self.metrics.latency.observe(time.monotonic() - started)
        await self._answers.answer(request, held, held.pace, response)

    async def _drop_expired(self, batch: Batch[S]) -> list[Pending[S]]:
        """Dead-letter the records whose window closed while they waited (docs/events.md: checked
        again just before sending); return the rest."""
        now_ms = self._wall_ms()
        if min((item.record.ends_at for item in batch.items), default=now_ms) >= now_ms:
            return batch.items  # none expired: one pass, no call per record
        live, expired = _split_expired(batch.items, now_ms)
        for item, rejection in expired:
            await self._answers.outcomes.dead_letter(item, rejection, None, None)
        return live


@dataclass(slots=True)
class _BatchRequest(Request[S, Batch[S]]):
    """One attempt of a batch."""

    path: ClassVar[Path] = BATCH

    @property
    def account(self) -> str:
        return self.queued.account

    @property
    def items(self) -> list[Pending[S]]:
        return self.queued.items

    def throttle(self, held: Held, pace: Pace, now: float, retry_after_s: float | None) -> float:
        """The token backs off, as its pool says (``TokenPool.throttled``)."""
        return self.pool.throttled(held, now, retry_after_s)

    def delivered(self, response: Response) -> None:
        batch = self.queued
        self.answers.delivered(BATCH, batch, response)
        if batch.probe is not None:
            batch.probe.set_result(response)

    async def refused(self, response: Response) -> None:
        """Halve until each refused record stands alone (docs/design.md#rejection); a probe's
        caller handles its refusal."""
        batch = self.queued
        items = batch.items
        if batch.probe is not None:
            batch.probe.set_result(response)
            return
        if len(items) == 1:
            await self.answers.rejected(items[0], response)
            return
        self.answers.metrics.counts.bisections += 1
        middle = len(items) // 2
        account, high, opened_at = batch.account, batch.high_priority, batch.opened_at
        halves = [
            Batch(account, high, items[middle:], opened_at=opened_at, bisected=True),
            Batch(account, high, items[:middle], opened_at=opened_at, bisected=True),
        ]
        for half in halves:  # reversed order + front: the first half is sent first
            self.lane.put(half, front=True)


def _split_expired(
    items: list[Pending[S]], now_ms: int
) -> tuple[list[Pending[S]], list[tuple[Pending[S], Rejection]]]:
    """``items`` whose window is still open, and the others with why they are dead-lettered."""
    live, expired = [], []
    for item in items:
        rejection = check_expiry(item.record.ends_at, now_ms, "expired")
        if rejection is None:
            live.append(item)
        else:
            expired.append((item, rejection))
    return live, expired
