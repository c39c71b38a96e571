"""The delivery engine: batches → requests under the quota, retried, bisected, reported.

Records enter with :meth:`Delivery.submit` and leave through the caller's :class:`Outcomes`: each
one exactly once, as ``delivered`` (in the batch the API accepted) or ``dead_letter`` (expired at
send time, or refused on its own by the API). Transient failures never leave: they are retried
with capped, fully jittered exponential backoff for as long as it takes (docs/design.md#retry);
the caller applies backpressure meanwhile.

Per account there is one ``stream.lanes.Lane`` and one dispatcher task that takes a slot on the
token of the account's pool (``stream.tokens``) whose next slot comes first, and only then picks
the batch, so a high-priority batch that arrives while normal ones wait gets the very next slot
(docs/design.md#quota). Retries and bisected halves go back to the front of their queue and take
slots like any request. A 429 sends only its token away (it backs off); the request goes back to
the front at once, for the next token.

**Urgent records** (high priority, or ``starts_at`` less than ``urgent_within_s`` ahead) skip
batching when the real-time lane is on (docs/design.md#real-time): each goes alone to the
single-record endpoint, through the account's ``stream.lanes.RealtimeLane`` (a per-token pace of
its own), with the same retries, token refreshes, expiry check and dead letters as a batch. When
that lane is full they join the account's high-priority batch, which, like every high-priority
batch, does not linger: it leaves with the next free slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

import msgspec

from stream.api import ApiClient
from stream.batching import Batch, Batcher, Pending, Urgent
from stream.events import encode_batch, encode_record
from stream.lanes import Lane, RealtimeLane, first_free
from stream.metrics import Metrics, status_class
from stream.pacing import Pace
from stream.tokens import Held, TokenPool, Tokens
from stream.validation import Rejection, check_expiry
from stream.wire import Response

__all__ = ["AUTH_REFUSED", "Backoff", "Delivery", "Outcomes", "api_rejection"]

S = TypeVar("S")
_log = logging.getLogger("stream.delivery")


class Outcomes(Protocol[S]):
    """Where records leave the engine; ``dead_letter`` returns once Kafka acknowledged the write."""

    def delivered(self, batch: Batch[S], response: Response) -> None: ...

    async def dead_letter(
        self, item: Pending[S], rejection: Rejection, status: int | None, body: bytes | None
    ) -> None: ...


AUTH_REFUSED = Rejection(
    code="auth_refused",
    field=None,
    message="the account's credentials have been refused for DCR_AUTH_GIVE_UP_S (the token "
    "endpoint refused its key, or no configured credential covers it)",
    stage="api",
)
"""Why the records of an account given up on are dead-lettered (docs/design.md#auth)."""


def api_rejection(status: int) -> Rejection:
    """Why a record the API refused on its own (400/413/422) is dead-lettered."""
    return Rejection(
        code="api_rejected",
        field=None,
        message=f"the API answered {status} for this record",
        stage="api",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Capped exponential backoff with full jitter, never shorter than a ``Retry-After``."""

    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        jittered = rng.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))
        return max(jittered, retry_after_s or 0.0)


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
        self._outcomes = outcomes
        self._version = version
        self._batcher: Batcher[S] = Batcher(
            max_records=max_records, linger_s=linger_s, max_bytes=max_bytes
        )
        self._rps = rate_limit_rps
        self._backoff = backoff or Backoff()
        self._wall_ms = wall_ms
        self._rng = rng or random.Random()
        self._lanes: dict[str, Lane[S]] = {}
        self._realtime_rps = realtime_rps
        self._urgent_ms = int(urgent_within_s * 1000)
        self._realtime: dict[str, RealtimeLane[S]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._closed = False
        self._timer: asyncio.Task[None] | None = None
        self.metrics = metrics or Metrics()
        self._counts = self.metrics.counts
        self._accept_s = {
            path: self.metrics.consume_to_accept.labels(path) for path in ("batch", "realtime")
        }

    # -- intake -----------------------------------------------------------------------------

    def submit(self, item: Pending[S]) -> None:
        """Add a record; it is sent when its batch is full, old enough or large enough."""
        self.submit_all((item,))

    def submit_all(self, items: Iterable[Pending[S]]) -> None:
        """Add records in order, as ``submit`` does, reading the clock once for all of them (the
        pipeline hands over each consumed slice in one call)."""
        loop = asyncio.get_running_loop()
        if self._timer is None:
            self._timer = loop.create_task(self._linger())
        # The linger timer sleeps until the oldest open batch is due; only a first open batch
        # brings that deadline forward.
        was_empty = not self._batcher
        now = loop.time()
        if self._realtime_rps is not None and not self._closed:
            items = self._route_urgent(items, now)
        for full in self._batcher.add_all(items, now):
            self._dispatch(full)
        if was_empty:
            self._wake.set()
        for account in self._batcher.open_high() if not self._closed else ():
            self._lane(account).ready.set()  # a high-priority batch leaves with the next slot

    def _route_urgent(self, items: Iterable[Pending[S]], now: float) -> list[Pending[S]]:
        """The records to batch: the urgent ones go to the real-time lane instead, but for its
        overflow (docs/design.md#real-time)."""
        now_ms = self._wall_ms()
        soon_ms = now_ms + self._urgent_ms
        batched = []
        for item in items:
            record = item.record
            if record.high_priority or now_ms < record.starts_at < soon_ms:
                overflow = self._urgent(item, now)
                if overflow is None:
                    continue
                item = overflow
            batched.append(item)
        return batched

    def _urgent(self, item: Pending[S], now: float) -> Pending[S] | None:
        """Queue an urgent record for the single-record endpoint; if its lane is full, return it
        as a high-priority record for the batches instead (docs/design.md#real-time)."""
        record = item.record
        lane = self._realtime_lane(record.account)
        if lane.room():
            lane.put(Urgent(item, now))
            return None
        self._counts.realtime_overflow[record.account] = (
            self._counts.realtime_overflow.get(record.account, 0) + 1
        )
        if record.high_priority:
            return item
        return Pending(msgspec.structs.replace(record, high_priority=True), item.source)

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

    def flush_open(self) -> None:
        """Send every open batch now, however young (revoke, shutdown)."""
        for batch in self._batcher.drain():
            self._dispatch(batch)

    async def close(self) -> None:
        """Stop every task; unresolved records stay unresolved (their offsets are not committed),
        and so do records submitted later."""
        self._closed = True
        tasks = [t for t in (self._timer, *self._tasks) if t is not None]
        tasks += [lane.task for lane in self._lanes.values() if lane.task is not None]
        tasks += [lane.task for lane in self._realtime.values() if lane.task is not None]
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
            lane = self._lanes[account] = Lane(self._rps)
            lane.task = asyncio.get_running_loop().create_task(self._run_lane(account, lane))
        return lane

    async def _run_lane(self, account: str, lane: Lane[S]) -> None:
        pool = self._tokens.pool(account)
        holds = self._batcher.holds
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
                self._spawn(self._send(lane, pool, held, batch))

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
            if token_wait_s > cap_wait_s:
                pool.want_more()
            wait_s = max(token_wait_s, cap_wait_s)
            if wait_s <= 0:
                pool.used(held, now)
                if lane.cap is not None:
                    lane.cap.take(now)
            return wait_s, held

        return await first_free(pool, pick, waiting)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            self._spawn(self._outcomes.dead_letter(item, rejection, None, None))
        batch.items = live
        if not live and batch.probe is not None:
            batch.probe.set_result(None)
        return bool(live)

    def _expire_urgent(self, lane: RealtimeLane[S]) -> None:
        """``_expire_queued`` for urgent records waiting for the single-record endpoint."""
        now_ms = self._wall_ms()
        if all(u.item.record.ends_at >= now_ms for u in lane.queue):
            return
        kept = []
        for urgent in lane.queue:
            rejection = check_expiry(urgent.item.record.ends_at, now_ms, "expired")
            if rejection is None:
                kept.append(urgent)
            else:
                self._spawn(self._outcomes.dead_letter(urgent.item, rejection, None, None))
        lane.queue.clear()
        lane.queue.extend(kept)

    # -- one request -------------------------------------------------------------------------

    async def _send(
        self, lane: Lane[S], pool: TokenPool, held: Held | None, batch: Batch[S]
    ) -> None:
        try:
            await self._try_send(lane, pool, held, batch)
        except Exception as exc:  # a bug must not strand a batch: its offsets would never commit
            _log.exception("sending a batch for account %s failed", batch.account)
            self._retry_later(lane, batch, Response(status=0, error=type(exc).__name__))

    async def _try_send(
        self, lane: Lane[S], pool: TokenPool, held: Held | None, batch: Batch[S]
    ) -> None:
        live = await self._drop_expired(batch)
        if not live:
            if batch.probe is not None:
                batch.probe.set_result(None)
            return
        batch.items = live
        if held is None and pool.given_up():  # its records leave as dead letters, none waits
            for item in live:
                await self._outcomes.dead_letter(item, AUTH_REFUSED, None, None)
            if batch.probe is not None:
                batch.probe.set_result(None)
            return
        if held is None:  # no token can be had: the request fails without going out
            self._retry_later(lane, batch, Response(status=0, error=pool.failing))
            return
        body = encode_batch([p.record for p in live], self._version)
        self.metrics.batch_size.observe(len(live))
        started = time.monotonic()
        response, _ = await self._client.post_batch(batch.account, body, held.token.reveal())
        self.metrics.latency.observe(time.monotonic() - started)
        self._counts.bump(self._counts.requests, (batch.account, status_class(response.status)))
        kind = response.kind
        self._counts.bump(self._counts.path_requests, ("batch", status_class(response.status)))
        if kind == "ok":
            held.pace.accepted()
            self._accepted("batch", batch, response)
            if batch.probe is not None:
                batch.probe.set_result(response)
        elif kind == "reject" and batch.probe is not None:
            batch.probe.set_result(response)
        elif kind == "reject":
            await self._reject(lane, batch, response)
        elif kind == "auth" and not (batch.auth_403 and response.status == 403):
            batch.auth_403 = response.status == 403
            pool.refused(held, asyncio.get_running_loop().time())
            lane.put(batch, front=True)
        elif response.status == 429:
            self._throttled(lane, pool, held, batch, response)
        else:
            self._retry_later(lane, batch, response)

    def _accepted(self, path: str, batch: Batch[S], response: Response) -> None:
        paths = self._counts.path_records
        paths[path] = paths.get(path, 0) + len(batch.items)
        self._accept_s[path].observe(asyncio.get_running_loop().time() - batch.opened_at)
        self._outcomes.delivered(batch, response)

    async def _drop_expired(self, batch: Batch[S]) -> list[Pending[S]]:
        """Dead-letter the records whose window closed while they waited (docs/events.md: checked
        again just before sending); return the rest."""
        now_ms = self._wall_ms()
        if min((item.record.ends_at for item in batch.items), default=now_ms) >= now_ms:
            return batch.items  # none expired: one pass, no call per record
        live, expired = _split_expired(batch.items, now_ms)
        for item, rejection in expired:
            await self._outcomes.dead_letter(item, rejection, None, None)
        return live

    async def _reject(self, lane: Lane[S], batch: Batch[S], response: Response) -> None:
        """400/413/422: halve until each refused record stands alone (docs/design.md#rejection)."""
        items = batch.items
        if len(items) == 1:
            rejection = api_rejection(response.status)
            await self._outcomes.dead_letter(items[0], rejection, response.status, response.body)
            return
        self._counts.bisections += 1
        middle = len(items) // 2
        halves = [
            Batch(batch.account, batch.high_priority, items[middle:], opened_at=batch.opened_at),
            Batch(batch.account, batch.high_priority, items[:middle], opened_at=batch.opened_at),
        ]
        for half in halves:  # reversed order + front: the first half is sent first
            lane.put(half, front=True)

    def _throttled(
        self, lane: Lane[S], pool: TokenPool, held: Held, batch: Batch[S], response: Response
    ) -> None:
        """A 429 costs only the request it refused: its token backs off (``Retry-After``, or
        capped exponential backoff), and the batch goes back to the front at once, for the next
        token (docs/design.md#retry)."""
        self._counts.retries += 1
        self._counts.throttled += 1
        self._counts.bump(self._counts.throttled_by, (batch.account, "request"))
        delay = pool.throttled(held, asyncio.get_running_loop().time(), response.retry_after_s)
        _log.warning(
            "request for account %s answered 429 on token %d; it backs off %.2f s, the batch "
            "goes to the next token",
            batch.account,
            held.index,
            delay,
        )
        lane.put(batch, front=True)

    def _retry_later(self, lane: Lane[S], batch: Batch[S], response: Response) -> None:
        batch.attempt += 1
        self._counts.retries += 1
        delay = self._backoff.delay(batch.attempt, response.retry_after_s, self._rng)
        _log.warning(
            "request for account %s failed (%s); retry %d in %.2f s",
            batch.account,
            response.status or response.error,
            batch.attempt,
            delay,
        )
        self._spawn(self._later(delay, functools.partial(lane.put, batch, front=True)))

    @staticmethod
    async def _later(delay: float, requeue: Callable[[], None]) -> None:
        """Back to the front of its lane after a retry's backoff."""
        await asyncio.sleep(delay)
        requeue()

    # -- the real-time lane (docs/design.md#real-time) ---------------------------------------

    def _realtime_lane(self, account: str) -> RealtimeLane[S]:
        lane = self._realtime.get(account)
        if lane is None:
            assert self._realtime_rps is not None
            lane = self._realtime[account] = RealtimeLane(self._realtime_rps)
            lane.size(sum(h.share for h in self._tokens.pool(account).held.values()))
            loop = asyncio.get_running_loop()
            lane.task = loop.create_task(self._run_realtime(account, lane))
        return lane

    async def _run_realtime(self, account: str, lane: RealtimeLane[S]) -> None:
        """One record per request, each as soon as a token's real-time pace allows: never
        waiting for a batch, and as many in flight as the pace lets go."""
        pool = self._tokens.pool(account)
        while True:
            while not lane.queue:
                lane.ready.clear()
                await lane.ready.wait()
            taken = await self._take_realtime_slot(
                lane, pool, functools.partial(self._expire_urgent, lane)
            )
            if not lane.queue:  # every record waiting expired meanwhile
                continue
            urgent = lane.queue.popleft()
            if taken is None and pool.given_up():
                self._spawn(self._outcomes.dead_letter(urgent.item, AUTH_REFUSED, None, None))
            elif taken is None:  # no token can be had: the request fails without going out
                self._retry_record_later(lane, urgent, Response(status=0, error=pool.failing))
            else:
                self._spawn(self._send_record(lane, pool, *taken, urgent))

    @staticmethod
    async def _take_realtime_slot(
        lane: RealtimeLane[S], pool: TokenPool, waiting: Callable[[], None]
    ) -> tuple[Held, Pace] | None:
        """``_take_slot`` for the single-record endpoint: the token whose real-time pace lets a
        request go first (its batch pace is not touched). Also sets how many records may wait:
        what the tokens held send in about a second."""

        def pick(usable: list[Held], now: float) -> tuple[float, tuple[Held, Pace]]:
            lane.size(sum(h.share for h in usable))
            paces = [(h, lane.pace(h.index, h, h.share)) for h in usable]
            held, pace = min(paces, key=lambda hp: hp[1].wait_s(now))
            wait_s = pace.wait_s(now)
            if wait_s <= 0:
                pace.take(now)
            else:
                pool.want_more()
            return wait_s, (held, pace)

        return await first_free(pool, pick, waiting)

    async def _send_record(
        self, lane: RealtimeLane[S], pool: TokenPool, held: Held, pace: Pace, urgent: Urgent[S]
    ) -> None:
        try:
            await self._try_send_record(lane, pool, held, pace, urgent)
        except Exception as exc:  # a bug must not strand a record: its offset would never commit
            _log.exception("sending a record for account %s failed", urgent.item.record.account)
            self._retry_record_later(lane, urgent, Response(status=0, error=type(exc).__name__))

    async def _try_send_record(
        self, lane: RealtimeLane[S], pool: TokenPool, held: Held, pace: Pace, urgent: Urgent[S]
    ) -> None:
        item = urgent.item
        record = item.record
        expired = check_expiry(record.ends_at, self._wall_ms(), "expired")
        if expired is not None:
            await self._outcomes.dead_letter(item, expired, None, None)
            return
        started = time.monotonic()
        response = await self._client.post_record(
            record.account, encode_record(record, self._version), held.token.reveal()
        )
        self.metrics.latency.observe(time.monotonic() - started)
        counts, status = self._counts, status_class(response.status)
        counts.bump(counts.requests, (record.account, status))
        counts.bump(counts.path_requests, ("realtime", status))
        kind = response.kind
        if kind == "ok":
            pace.accepted()
            batch = Batch(record.account, record.high_priority, [item], opened_at=urgent.at)
            batch.single = True
            self._accepted("realtime", batch, response)
        elif kind == "reject":
            rejection = api_rejection(response.status)
            await self._outcomes.dead_letter(item, rejection, response.status, response.body)
        elif kind == "auth" and not (urgent.auth_403 and response.status == 403):
            urgent.auth_403 = response.status == 403
            pool.refused(held, asyncio.get_running_loop().time())
            lane.put(urgent, front=True)
        elif response.status == 429:
            counts.retries += 1
            counts.throttled += 1
            counts.bump(counts.throttled_by, (record.account, "realtime"))
            now = asyncio.get_running_loop().time()
            backoff = (self._backoff.base_s, self._backoff.cap_s)
            delay = pace.throttled(now, response.retry_after_s, backoff, self._rng)
            _log.warning(
                "record for account %s answered 429 on token %d; its real-time pace backs off "
                "%.2f s, the record goes to the next token",
                record.account,
                held.index,
                delay,
            )
            lane.put(urgent, front=True)
        else:
            self._retry_record_later(lane, urgent, response)

    def _retry_record_later(
        self, lane: RealtimeLane[S], urgent: Urgent[S], response: Response
    ) -> None:
        urgent.attempt += 1
        self._counts.retries += 1
        delay = self._backoff.delay(urgent.attempt, response.retry_after_s, self._rng)
        _log.warning(
            "record for account %s failed (%s); retry %d in %.2f s",
            urgent.item.record.account,
            response.status or response.error,
            urgent.attempt,
            delay,
        )
        self._spawn(self._later(delay, functools.partial(lane.put, urgent, front=True)))


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
