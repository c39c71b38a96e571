"""The real-time lane of the delivery engine (issue 16) against the sandbox over loopback HTTP:
which records are urgent, the single-record endpoint's retries, refreshes, dead letters and expiry,
the overflow to high-priority batches, and high-priority batches that leave with the next slot."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import msgspec
import pytest

from stream.batching import Pending, Urgent
from stream.events import Record
from stream.lanes import RealtimeLane
from stream.sandbox import ManualClock, Sandbox, SandboxConfig
from stream.secrets import Secret
from stream.tokens import MintedTokens
from tests.support.delivery import TOKEN, engine, record, session
from tests.support.delivery import A as ACCOUNT

__all__ = ["session"]  # the fixture

SECOND_MS = 1000
HOUR_S = 3600.0
"""How long batches linger here: a batch that leaves did so because it filled, was flushed, or is
high priority and took a slot."""
RPS = 100.0
"""The real-time lane's requests per token and second. A record is urgent by time when it starts
within a minute (``Delivery``'s default ``urgent_within_s``)."""


def starting_in(n: int, seconds: float, **changes: Any) -> Record:
    """Record ``n`` whose window opens ``seconds`` from now (negative: opened that long ago)."""
    now_ms = int(time.time() * 1000)
    starts_at = now_ms + int(seconds * SECOND_MS)
    return msgspec.structs.replace(
        record(n), starts_at=starts_at, ends_at=max(starts_at, now_ms) + 3_600_000, **changes
    )


def paths(sandbox: Sandbox) -> dict[str, str]:
    """Receiver → the path that accepted it."""
    return {r.receiver: r.path for r in sandbox.accepted()}


def receiver(n: int) -> str:
    return f"9198{n:08d}"


async def test_urgent_records_go_alone_and_at_once_the_others_wait_for_their_batch(
    session: aiohttp.ClientSession,
) -> None:
    async with Sandbox(SandboxConfig(static_token=TOKEN)) as sandbox:
        delivery, recorder = engine(session, sandbox.url, linger_s=HOUR_S, realtime_rps=RPS)
        delivery.submit_all(
            [
                Pending(record(1, high=True), 1),  # high priority
                Pending(starting_in(2, 30), 2),  # opens in 30 s: urgent by time
                Pending(starting_in(3, -60), 3),  # opened a minute ago: not urgent
                Pending(starting_in(4, 120), 4),  # opens in two minutes: not yet urgent
                Pending(record(5), 5),
            ]
        )
        await recorder.until_resolved(2)
        assert sorted(recorder.sources) == [1, 2]
        delivery.flush_open()
        await recorder.until_resolved(5)
        await delivery.close()
        stats = sandbox.stats().totals
    assert paths(sandbox) == {
        receiver(1): "realtime",
        receiver(2): "realtime",
        receiver(3): "batch",
        receiver(4): "batch",
        receiver(5): "batch",
    }
    assert stats.realtime_requests == {"200": 2}
    counts = delivery.metrics.counts
    assert counts.path_records == {"realtime": 2, "batch": 3}
    assert counts.path_requests == {("realtime", "2xx"): 2, ("batch", "2xx"): 1}
    exposition = delivery.metrics.exposition().decode()
    assert 'dcr_consume_to_accept_seconds_count{path="realtime"} 2.0' in exposition
    assert 'dcr_consume_to_accept_seconds_count{path="batch"} 1.0' in exposition


async def test_with_the_lane_off_a_high_priority_batch_leaves_with_the_next_slot(
    session: aiohttp.ClientSession,
) -> None:
    async with Sandbox(SandboxConfig(static_token=TOKEN)) as sandbox:
        delivery, recorder = engine(session, sandbox.url, linger_s=HOUR_S)
        delivery.submit_all([Pending(record(n, high=n < 3), n) for n in range(6)])
        await recorder.until_resolved(3)  # the normal ones linger for an hour
        await delivery.close()
    assert sorted(recorder.sources) == [0, 1, 2]
    assert set(paths(sandbox).values()) == {"batch"}
    assert len({r.batch_id for r in sandbox.accepted()}) == 1  # one slice, one batch


async def test_a_refused_record_is_dead_lettered_with_the_status_and_body(
    session: aiohttp.ClientSession,
) -> None:
    known = "1b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"
    config = SandboxConfig(static_token=TOKEN, labels={ACCOUNT: frozenset({known})})
    async with Sandbox(config) as sandbox:
        delivery, recorder = engine(session, sandbox.url, linger_s=HOUR_S, realtime_rps=RPS)
        delivery.submit_all(
            [Pending(record(1, high=True), 1), Pending(record(2, high=True, label=known), 2)]
        )
        await recorder.until_resolved(2)
        await delivery.close()
    assert recorder.sources == [2]
    [(source, rejection, status, body)] = recorder.dead
    assert (source, rejection.code, rejection.stage, status) == (1, "api_rejected", "api", 400)
    assert body is not None
    assert msgspec.json.decode(body)["field"] == "label_id"


async def test_5xx_429_and_timeouts_are_retried_on_the_lane(
    session: aiohttp.ClientSession,
) -> None:
    async with Sandbox(SandboxConfig(static_token=TOKEN)) as sandbox:
        sandbox.set_faults(fail_next=3, throttle_next=2, throttle_retry_after_s=0)
        delivery, recorder = engine(session, sandbox.url, linger_s=HOUR_S, realtime_rps=RPS)
        delivery.submit_all([Pending(record(n, high=True), n) for n in range(20)])
        await recorder.until_resolved(20)
        await delivery.close()
        stats = sandbox.stats().totals
    assert recorder.dead == []
    assert sorted(recorder.sources) == list(range(20))
    assert set(paths(sandbox).values()) == {"realtime"}
    assert stats.realtime_requests["200"] == 20
    assert stats.realtime_requests["429"] == 2
    assert delivery.metrics.counts.retries == 5


async def test_a_record_whose_window_closed_while_it_waited_is_dead_lettered_unsent(
    session: aiohttp.ClientSession,
) -> None:
    async with Sandbox(SandboxConfig(static_token=TOKEN)) as sandbox:
        late = [0]
        delivery, recorder = engine(
            session,
            sandbox.url,
            linger_s=HOUR_S,
            realtime_rps=RPS,
            wall_ms=lambda: int(time.time() * 1000) + late[0],
        )
        sandbox.set_faults(fail_next=1)
        delivery.submit(Pending(record(1, high=True), 1))
        late[0] = 2 * 3_600_000  # by the retry, its window (an hour) has closed
        await recorder.until_resolved(1)
        await delivery.close()
    [(source, rejection, status, _)] = recorder.dead
    assert (source, rejection.code, rejection.stage, status) == (1, "expired", "expired", None)
    assert sandbox.accepted() == []


async def test_an_expired_minted_token_is_reminted_for_the_lane(
    session: aiohttp.ClientSession,
) -> None:
    clock = ManualClock()
    config = SandboxConfig(key_id="key", api_key="secret-key", token_lifetime_s=3)
    async with Sandbox(config, clock=clock) as sandbox:
        tokens = MintedTokens(
            session, base_url=sandbox.url, key_id="key", api_key=Secret("secret-key")
        )
        delivery, recorder = engine(
            session, sandbox.url, tokens=tokens, linger_s=HOUR_S, realtime_rps=RPS
        )
        delivery.submit(Pending(record(1, high=True), 1))
        await recorder.until_resolved(1)
        clock.advance(5)  # the token has expired
        delivery.submit(Pending(record(2, high=True), 2))
        await recorder.until_resolved(2)
        await delivery.close()
        stats = sandbox.stats().totals
    assert sorted(recorder.sources) == [1, 2]
    assert stats.tokens == {"200": 2}
    # The expired token is refused once (401) and replaced; or, when the second record comes
    # within the first token's real-time gap (8 ms, a loaded machine), the lane asks for one more
    # token first and never sends on the expired one. Either way: two mints, no record lost.
    assert stats.realtime_requests["200"] == 2
    assert stats.realtime_requests.get("401", 0) <= 1
    assert set(stats.realtime_requests) <= {"200", "401"}


@pytest.mark.parametrize("high", [True, False])
async def test_a_full_lane_overflows_to_a_high_priority_batch_and_nothing_is_lost(
    session: aiohttp.ClientSession, high: bool
) -> None:
    async with Sandbox(SandboxConfig(static_token=TOKEN)) as sandbox:
        # One request a second: the lane lets one record wait; the rest overflow.
        delivery, recorder = engine(session, sandbox.url, linger_s=HOUR_S, realtime_rps=1)
        urgent = [starting_in(n, 30, high_priority=high) for n in range(50)]
        delivery.submit_all([Pending(r, n) for n, r in enumerate(urgent)])
        await recorder.until_resolved(50)
        await delivery.close()
    assert sorted(recorder.sources) == list(range(50))
    taken = list(paths(sandbox).values())
    assert taken.count("realtime") >= 1
    assert taken.count("batch") >= 40
    overflow = delivery.metrics.counts.realtime_overflow[ACCOUNT]
    assert overflow == taken.count("batch")
    batches = [batch for batch, response, _ in recorder.batches if response.batch_id is not None]
    assert batches
    assert all(batch.high_priority for batch in batches)


def test_a_realtime_pace_per_token_and_share_and_a_second_of_room() -> None:
    lane: RealtimeLane[int] = RealtimeLane(100)
    token, other = object(), object()
    pace = lane.pace(0, token, 1.0)
    assert lane.pace(0, token, 1.0) is pace
    assert lane.pace(0, other, 1.0) is not pace  # another token held in that slot: a fresh pace
    half = lane.pace(0, other, 0.5)
    assert half.slots is not None
    assert half.slots.n == 50
    for now in range(100):
        assert pace.wait_s(now * 0.0083) == 0
        pace.take(now * 0.0083)
    assert pace.wait_s(100 * 0.0083) > 0  # 100 in any rolling 1.02 s
    assert lane.room()
    for n in range(100):
        lane.put(Urgent(Pending(record(n), n), 0.0))
    assert not lane.room()
