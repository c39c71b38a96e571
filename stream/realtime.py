"""The real-time path: urgent records, each alone on the single-record endpoint
(docs/design.md#real-time).

``stream.delivery.Delivery`` hands every consumed slice to :meth:`Realtime.route` before batching
it. An **urgent** record (high priority, or ``starts_at`` less than ``urgent_within_s`` ahead) skips
batching: it waits in its account's ``stream.lanes.RealtimeLane``, whose dispatcher sends it alone
as soon as a token's real-time pace (apart from its batch pace) lets a request go, without waiting
for the answer before the next. The answer is acted on as a batch's is (``stream.outcomes``): the
same retries, token refreshes and dead letters, and the same expiry check before it goes. When the
lane is full, the record is batched instead, as a high-priority record: such a batch does not
linger, it leaves with the next free slot.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar, Generic, Literal, TypeVar

import msgspec

from stream.api import ApiClient
from stream.batching import Batch, Pending, Urgent
from stream.events import encode_record
from stream.held import Held
from stream.lanes import RealtimeLane, first_free, restarting
from stream.outcomes import AUTH_REFUSED, REALTIME, Answers, Path, Request
from stream.pacing import Pace
from stream.pool import TokenPool
from stream.tokens import Tokens
from stream.validation import check_expiry
from stream.wire import Response

__all__ = ["Realtime"]

S = TypeVar("S")


class Realtime(Generic[S]):
    """Urgent records, one request each, per account under its tokens' real-time paces."""

    def __init__(
        self,
        *,
        client: ApiClient,
        tokens: Tokens,
        answers: Answers[S],
        version: Literal["v1", "v2"],
        rps: float,
        urgent_within_s: float,
        wall_ms: Callable[[], int],
    ) -> None:
        """``rps``: single-record requests per token and second
        (``DCR_REALTIME_REQUESTS_PER_SECOND``)."""
        self._client = client
        self._tokens = tokens
        self._answers = answers
        self._version = version
        self._rps = rps
        self._urgent_ms = int(urgent_within_s * 1000)
        self._wall_ms = wall_ms
        self._lanes: dict[str, RealtimeLane[S]] = {}
        self._metrics = answers.metrics
        self.to_batches: Callable[[list[Pending[S]]], None] = lambda items: None
        """Where urgent records go when no token of the account is this replica's own (token
        sharing, ``Held.elsewhere``): back to the batches (``Delivery.submit_all``)."""

    def route(self, items: Iterable[Pending[S]], now: float) -> list[Pending[S]]:
        """Take the urgent records of ``items`` (``now``: the loop's clock); return the records to
        batch: the others, and the urgent ones the lane had no room for."""
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

    def tasks(self) -> list[asyncio.Task[None]]:
        """The lanes' dispatchers (``Delivery.close`` cancels them)."""
        return [lane.task for lane in self._lanes.values() if lane.task is not None]

    def _urgent(self, item: Pending[S], now: float) -> Pending[S] | None:
        """Queue an urgent record for the single-record endpoint; if its lane is full, return it
        as a high-priority record for the batches instead."""
        record = item.record
        lane = self._lane(record.account)
        if lane.room() and _has_own(self._tokens.pool(record.account)):
            lane.put(Urgent(item, now))
            return None
        overflow = self._metrics.counts.realtime_overflow
        overflow[record.account] = overflow.get(record.account, 0) + 1
        if record.high_priority:
            return item
        return Pending(msgspec.structs.replace(record, high_priority=True), item.source)

    def _lane(self, account: str) -> RealtimeLane[S]:
        lane = self._lanes.get(account)
        if lane is None:
            lane = self._lanes[account] = RealtimeLane(self._rps)
            lane.size(sum(h.share for h in self._tokens.pool(account).held.values()))
            run = functools.partial(self._run, account, lane)
            dispatcher = restarting(run, f"the real-time dispatcher of account {account}")
            lane.task = asyncio.get_running_loop().create_task(dispatcher)
        return lane

    async def _run(self, account: str, lane: RealtimeLane[S]) -> None:
        """One record per request, each as soon as a token's real-time pace allows: never
        waiting for a batch, and as many in flight as the pace lets go."""
        pool = self._tokens.pool(account)
        answers = self._answers
        while True:
            while not lane.queue:
                lane.ready.clear()
                await lane.ready.wait()
            if self._to_batches_if_no_own(lane, pool):
                continue
            waiting = functools.partial(self._expire, lane, pool)
            taken = await self._take_slot(lane, pool, waiting)
            if not lane.queue:  # every record waiting expired meanwhile
                continue
            request = _RecordRequest(lane.queue.popleft(), lane, pool, answers)
            if taken is None and pool.given_up():
                answers.dead_letter_soon(request.queued.item, AUTH_REFUSED)
            elif taken is None:  # no token can be had: the request fails without going out
                answers.retry_later(request, Response(status=0, error=pool.failing))
            else:
                answers.send(request, functools.partial(self._send, request, *taken))

    @staticmethod
    async def _take_slot(
        lane: RealtimeLane[S], pool: TokenPool, waiting: Callable[[], None]
    ) -> tuple[Held, Pace] | None:
        """``stream.delivery``'s ``_take_slot`` for the single-record endpoint: the token whose
        real-time pace lets a request go first (its batch pace is not touched). Also sets how many
        records may wait: what the tokens held send in about a second."""

        def pick(usable: list[Held], now: float) -> tuple[float, tuple[Held, Pace]]:
            own = [h for h in usable if not h.elsewhere]
            if not own:  # none is this replica's (sharing): ``_expire`` moves them to batches
                return 1.0, (usable[0], Pace(None))
            usable = own
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

    def _to_batches_if_no_own(self, lane: RealtimeLane[S], pool: TokenPool) -> bool:
        """With token sharing, a replica whose slots moved on sends what waits in batches."""
        if _has_own(pool):
            return False
        waiting = [urgent.item for urgent in lane.queue]
        lane.queue.clear()
        self.to_batches(waiting)
        return True

    def _expire(self, lane: RealtimeLane[S], pool: TokenPool) -> None:
        """Records whose window closed while they waited for a token or a slot leave now, as dead
        letters (docs/design.md#bounded-progress); with no token of its own (sharing), the others
        go in batches."""
        if self._to_batches_if_no_own(lane, pool):
            return
        now_ms = self._wall_ms()
        if all(u.item.record.ends_at >= now_ms for u in lane.queue):
            return
        kept = []
        for urgent in lane.queue:
            rejection = check_expiry(urgent.item.record.ends_at, now_ms, "expired")
            if rejection is None:
                kept.append(urgent)
            else:
                self._answers.dead_letter_soon(urgent.item, rejection)
        lane.queue.clear()
        lane.queue.extend(kept)

    def drop_unowned(self) -> None:
        """Take the records of partitions being revoked out of the queues (``Delivery``'s)."""
        owned = self._answers.owned
        for lane in self._lanes.values():
            kept = [u for u in lane.queue if owned([u.item])]
            lane.queue.clear()
            lane.queue.extend(kept)

    async def _send(self, request: _RecordRequest[S], held: Held, pace: Pace) -> None:
        item = request.queued.item
        if not self._answers.owned([item]):
            return
        record = item.record
        expired = check_expiry(record.ends_at, self._wall_ms(), "expired")
        if expired is not None:
            await self._answers.outcomes.dead_letter(item, expired, None, None)
            return
        started = time.monotonic()
        response = await self._client.post_record(
            record.account, encode_record(record, self._version), held.token.reveal()
        )
        self._metrics.latency.observe(time.monotonic() - started)
        await self._answers.answer(request, held, pace, response)


@dataclass(slots=True)
class _RecordRequest(Request[S, Urgent[S]]):
    """One attempt of an urgent record."""

    path: ClassVar[Path] = REALTIME

    @property
    def account(self) -> str:
        return self.queued.item.record.account

    @property
    def items(self) -> list[Pending[S]]:
        return [self.queued.item]

    def throttle(self, held: Held, pace: Pace, now: float, retry_after_s: float | None) -> float:
        """Only the token's real-time pace backs off; its batch pace is not touched."""
        backoff = self.answers.backoff
        return pace.throttled(now, retry_after_s, (backoff.base_s, backoff.cap_s), self.answers.rng)

    def delivered(self, response: Response) -> None:
        """Final at its 2xx: there is no batch status to ask for (``Batch.single``)."""
        urgent = self.queued
        record = urgent.item.record
        batch = Batch(record.account, record.high_priority, [urgent.item], opened_at=urgent.at)
        batch.single = True
        self.answers.delivered(REALTIME, batch, response)

    async def refused(self, response: Response) -> None:
        await self.answers.rejected(self.queued.item, response)


def _has_own(pool: TokenPool) -> bool:
    """Whether urgent records of ``pool``'s account may wait for a token here: with token sharing,
    only the tokens of the slots held here carry them (the API's per-token second is not claimed);
    without, any. Before the slots were first handed out, they wait (that comes within seconds)."""
    held = pool.held.values()
    return pool.sharing is None or not pool.settled() or any(not h.elsewhere for h in held)
