"""Token pools and per-token pacing (docs/design.md#quota, #auth): both sides of each limit.

Paces are asked at chosen times (no clock); pools run against the sandbox over loopback with an
injected wall clock where the mint budget's 30 minutes matter.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest

from stream.batching import Pending
from stream.credentials import CredentialsFile, KeyPair, StaticTokens, parse_credentials
from stream.errors import AuthError
from stream.leases import LocalLeases, Release
from stream.minting import MAX_MINTS, Minter, SlotRecord, live_token
from stream.pacing import Pace, Slots
from stream.sandbox import ManualClock, Sandbox, SandboxConfig
from stream.secrets import Secret
from stream.tokens import Tokens
from tests.support.delivery import TOKEN, A, engine, record, session
from tests.support.waiting import wait_until_async

__all__ = ["session"]  # the fixture

KEY_ID, API_KEY = "key-1", "api-key-secret-1"


class Wall:
    """A wall clock the test moves (the mint budget counts 30 minutes of it)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class SomeLeases(LocalLeases):
    """Slots held by this process: some of them, changed by the test."""

    def __init__(self, slots: int, owned: set[int]) -> None:
        super().__init__(slots)
        self._owned = frozenset(owned)
        self._listeners: list[Callable[[], None]] = []

    def owned(self) -> frozenset[int]:
        return self._owned

    def watch(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def on_release(self, release: Release) -> None:
        self._release = release

    def hold(self, owned: set[int]) -> None:
        """As ``KafkaLeases`` does: the handover of the slots let go is written first."""
        gone = self._owned - owned
        if gone and hasattr(self, "_release"):
            for account, slot, value in self._release(frozenset(gone)):
                self._records[(account, slot)] = value
        self._owned = frozenset(owned)
        for listener in self._listeners:
            listener()

    def share(self, other: LocalLeases) -> None:
        """Remember in ``other``'s records: as two processes reading one topic."""
        self._records = other._records


# -- paces (no clock) ---------------------------------------------------------------------------


def send_all(slots: Slots, count: int, late: Callable[[int], float] = lambda n: 0.0) -> list[float]:
    now, sent = 0.0, []
    for n in range(count):
        now += slots.wait_s(now) + late(n)
        slots.take(now)
        sent.append(now)
    return sent


def test_a_token_sends_60_in_any_rolling_minute_spread_evenly() -> None:
    # Every 9th request 30 ms late: about what a busy loop costs, made up for by the 1% in hand.
    sent = send_all(Slots.per_minute(60), 300, late=lambda n: 0.03 if n % 9 == 4 else 0.0)
    # Never 61 in a minute (the 61st is more than 60 s after the first of them) ...
    assert min(b - a for a, b in zip(sent, sent[60:], strict=False)) > 60.0
    # ... and never a burst: no two closer than 0.99 s, the first 60 over at least 58 s.
    assert min(b - a for a, b in itertools.pairwise(sent)) >= 0.99 - 1e-9
    assert sent[59] - sent[0] >= 58.0
    # The other side: the 1 s of lateness is made up for. On time, 300 requests take four windows
    # of 60.25 s and 59 gaps of 0.99 s (299.4 s); without making up, 1 s more.
    assert sent[-1] - sent[0] < 4 * 60.25 + 59 * 0.99 + 0.5


def test_a_share_of_a_token_gets_its_share_of_the_minute() -> None:
    sent = send_all(Slots.per_minute(6), 20)
    assert min(b - a for a, b in zip(sent, sent[6:], strict=False)) > 60.0
    assert min(b - a for a, b in itertools.pairwise(sent)) >= 9.5 - 1e-9


def test_a_token_taken_over_waits_one_spacing_then_goes_at_the_pace() -> None:
    slots = Slots.per_minute(60).seeded(100.0)
    first = slots.wait_s(100.0)
    # Whoever held it may have sent its 60 as late as its pace allows: 0.99 s apart, until now.
    assert 60.25 - 59 * 0.99 - 0.01 < first < 60.25 - 59 * 0.99 + 0.01
    sent = send_all(slots, 0)
    now = 100.0 + first
    for _ in range(120):
        now += slots.wait_s(now)
        slots.take(now)
        sent.append(now)
    assert min(b - a for a, b in itertools.pairwise(sent)) >= 0.99 - 1e-9
    assert sent[-1] - sent[0] < 121.0
    # With the history assumed, no rolling minute holds more than 60 of the two holders' requests.
    before = [100.0 - k * 0.99 for k in range(60)]
    both = sorted(before + sent)
    assert min(b - a for a, b in zip(both, both[60:], strict=False)) > 60.0


def test_a_429_backs_off_its_token_only() -> None:
    rng = random.Random(3)
    hit, other = Pace(Slots.per_minute(60)), Pace(Slots.per_minute(60))
    assert hit.throttled(10.0, 7.0, (0.5, 30.0), rng) == 7.0  # Retry-After honoured
    assert hit.wait_s(10.0) == pytest.approx(7.0)
    assert other.wait_s(10.0) == 0.0
    delays = [hit.throttled(10.0, None, (0.5, 30.0), rng) for _ in range(12)]
    assert all(0 <= d <= 30.0 for d in delays)  # capped at DCR_RETRY_CAP_MS
    assert max(delays) > 8.0  # and exponential: it grows while the 429s go on
    hit.accepted()
    assert hit.throttles == 0


# -- pools --------------------------------------------------------------------------------------


async def test_static_tokens_fill_the_slots_held_and_share_when_fewer_than_slots() -> None:
    tokens = [Secret(f"token-{i}") for i in range(10)]
    leases = SomeLeases(10, {0, 3, 7})
    pool = Tokens(StaticTokens(tokens), leases=leases, requests_per_minute=60).pool(A)
    await wait_until_async(lambda: len(pool.usable()) == 3, timeout_s=10)
    assert {h.token.reveal() for h in pool.usable()} == {"token-0", "token-3", "token-7"}
    leases.hold({1, 2})
    await wait_until_async(lambda: {h.index for h in pool.usable()} == {1, 2}, timeout_s=10)
    # Two tokens, ten slots: token 0 is shared by slots 0, 2, 4, 6, 8; holding two of them is
    # holding two fifths of its minute.
    shared = Tokens(
        StaticTokens(tokens[:2]), leases=SomeLeases(10, {0, 4, 1}), requests_per_minute=60
    )
    pool = shared.pool(A)
    await wait_until_async(lambda: len(pool.usable()) == 2, timeout_s=10)
    rates = {h.index: (h.share, h.pace.slots.n if h.pace.slots else 0) for h in pool.usable()}
    assert {i: n for i, (_, n) in rates.items()} == {0: 24, 1: 12}
    assert {i: share for i, (share, _) in rates.items()} == pytest.approx({0: 0.4, 1: 0.2})
    leases.hold(set())
    await wait_until_async(lambda: pool.report().waiting is not None or True, timeout_s=10)
    await shared.close()


async def test_minted_tokens_come_on_demand_one_mint_per_slot_per_30_minutes(
    session: aiohttp.ClientSession,
) -> None:
    clock = ManualClock()
    async with Sandbox(SandboxConfig(key_id=KEY_ID, api_key=API_KEY), clock=clock) as sandbox:
        wall = Wall()
        tokens = Tokens(
            KeyPair(KEY_ID, Secret(API_KEY)),
            minter=Minter(session, base_url=sandbox.url),
            wall=wall,
        )
        pool = tokens.pool(A)
        await asyncio.sleep(0.05)
        assert pool.mints == 0  # nothing asked yet: nothing minted
        for n in range(1, MAX_MINTS + 3):
            pool.want_more()
            await wait_until_async(lambda n=n: len(pool.held) == min(n, MAX_MINTS), timeout_s=10)  # type: ignore[misc]
        assert pool.mints == MAX_MINTS
        # Every token refused: no slot may mint again within 30 minutes of its mint.
        now = asyncio.get_running_loop().time()
        for held in list(pool.held.values()):
            pool.refused(held, now)
        pool.want_more()
        await asyncio.sleep(0.1)
        assert pool.held == {}
        assert pool.mints == MAX_MINTS
        assert "next attempt at" in (pool.report().waiting or "")
        wall.now += 30 * 60 + 11
        clock.advance(30 * 60 + 11)
        pool.want_more()
        await wait_until_async(lambda: len(pool.held) == 1, timeout_s=10)
        assert sandbox.stats().totals.tokens == {"200": MAX_MINTS + 1}
        await tokens.close()


async def test_a_restarted_process_reuses_the_live_tokens_the_slots_remember(
    session: aiohttp.ClientSession,
) -> None:
    async with Sandbox(SandboxConfig()) as sandbox:  # any key pair mints
        leases = LocalLeases(10)  # what the token topic keeps across processes
        minter = Minter(session, base_url=sandbox.url)
        first = Tokens(KeyPair(KEY_ID, Secret(API_KEY)), minter=minter, leases=leases)
        pool = first.pool(A)
        for n in (1, 2, 3):
            pool.want_more()
            await wait_until_async(lambda n=n: len(pool.held) == n, timeout_s=10)  # type: ignore[misc]
        minted = {h.index: h.token.reveal() for h in pool.held.values()}
        await first.close()
        # The next process: it reads the slots and sends on their tokens, minting none.
        second = Tokens(KeyPair(KEY_ID, Secret(API_KEY)), minter=minter, leases=leases)
        again = second.pool(A)
        again.want_more()
        await wait_until_async(lambda: len(again.held) >= 3, timeout_s=10)
        assert {h.index: h.token.reveal() for h in again.held.values() if h.index in minted} == (
            minted
        )
        assert again.mints <= 1  # the one asked for beyond the three it found
        # The record holds the token sealed, never in clear, and its mints.
        raw = leases.record(A, 0)
        assert raw is not None
        assert minted[0].encode() not in raw
        assert len(msgspec.json.decode(raw, type=SlotRecord).mints) == 1
        await second.close()
        # With another API key the sealed tokens do not open: it mints, within the budget.
        other = Tokens(KeyPair(KEY_ID, Secret("rotated-key")), minter=minter, leases=leases)
        rotated = other.pool(A)
        rotated.want_more()
        await wait_until_async(lambda: len(rotated.held) == 1, timeout_s=10)
        assert 0 not in rotated.held  # slots 0-2 minted less than 30 minutes ago
        await other.close()


async def test_a_tool_reads_a_live_token_from_the_slots_rather_than_mint(
    session: aiohttp.ClientSession,
) -> None:
    """``dcr-stream status`` with a key pair: a token the slots hold opens with the account's key
    while its refresh margin is left; past it, or with another key, there is none (it mints)."""
    async with Sandbox(SandboxConfig()) as sandbox:
        leases = LocalLeases(10)
        tokens = Tokens(
            KeyPair(KEY_ID, Secret(API_KEY)),
            minter=Minter(session, base_url=sandbox.url),
            leases=leases,
        )
        pool = tokens.pool(A)
        pool.want_more()
        await wait_until_async(lambda: len(pool.held) == 1, timeout_s=10)
        (held,) = pool.held.values()
        records = {(A, p): raw for p in range(10) if (raw := leases.record(A, p)) is not None}
        assert held.minted_at is not None
        assert live_token(A, Secret(API_KEY), records, held.minted_at + 60) == held.token.reveal()
        assert live_token(A, Secret(API_KEY), records, held.minted_at + 3000) is None
        assert live_token(A, Secret("rotated-key"), records, held.minted_at + 60) is None
        assert live_token(A.replace("6", "7"), Secret(API_KEY), records, held.minted_at) is None
        await tokens.close()


async def test_a_token_asked_for_before_the_slots_come_is_had_once_they_do(
    session: aiohttp.ClientSession,
) -> None:
    """At start-up the token slots come a moment after the first records: a label read that asked
    for a token meanwhile gets one once they come, never the reason there was none before them
    (with a slow API, every account's first label read failed so: B6)."""
    async with Sandbox(SandboxConfig()) as sandbox:
        leases = SomeLeases(10, set())
        minter = Minter(session, base_url=sandbox.url)
        tokens = Tokens(KeyPair(KEY_ID, Secret(API_KEY)), minter=minter, leases=leases)
        pool = tokens.pool(A)
        asked = asyncio.create_task(tokens.get(A))
        await wait_until_async(lambda: pool.waiting is not None, timeout_s=10)
        assert pool.waiting == "this process holds no slot of the token pool"
        leases.hold({0})
        assert pool.waiting is None  # said of no slot: it no longer holds
        token = await asyncio.wait_for(asked, 10)
        await tokens.close()
    assert token == pool.held[0].token.reveal()


async def test_a_slot_let_go_hands_its_tokens_history_to_the_next_holder(
    session: aiohttp.ClientSession,
) -> None:
    async with Sandbox(SandboxConfig()) as sandbox:
        minter = Minter(session, base_url=sandbox.url)
        old_leases, new_leases = SomeLeases(10, {0, 1}), SomeLeases(10, set())
        new_leases.share(old_leases)
        old = Tokens(
            KeyPair(KEY_ID, Secret(API_KEY)),
            minter=minter,
            leases=old_leases,
            requests_per_minute=60,
        )
        pool = old.pool(A)
        pool.want_more()
        await wait_until_async(lambda: 0 in pool.held or 1 in pool.held, timeout_s=10)
        held = next(iter(pool.held.values()))
        loop = asyncio.get_running_loop()
        for k in range(5):
            pool.used(held, loop.time() - 5 + k)  # five requests in the last five seconds
        old_leases.hold(set())  # a rebalance takes both slots away
        assert pool.usable() == []  # from now on nothing goes out on them here
        record = msgspec.json.decode(old_leases.record(A, held.index) or b"", type=SlotRecord)
        assert record.released_at is not None
        assert len(record.sent) == 5
        # The next holder goes on at the token's pace: no 1.8 s wait for the worst case.
        new = Tokens(
            KeyPair(KEY_ID, Secret(API_KEY)),
            minter=minter,
            leases=new_leases,
            requests_per_minute=60,
        )
        taken = new.pool(A)
        new_leases.hold({held.index})
        await wait_until_async(lambda: held.index in taken.held, timeout_s=10)
        assert taken.held[held.index].token == held.token
        assert taken.held[held.index].pace.wait_s(loop.time()) < 0.5
        assert taken.mints == 0
        # ... once the record says it is taken: a crash now leaves the next one the worst case.
        raw = new_leases.record(A, held.index) or b""
        assert msgspec.json.decode(raw, type=SlotRecord).released_at is None
        await old.close()
        await new.close()


async def test_a_mint_is_remembered_before_it_is_asked_for() -> None:
    leases = LocalLeases(10)
    seen: list[SlotRecord] = []

    class Crashing(Minter):
        async def mint(self, account: str, key_id: str, api_key: Secret) -> str:
            raw = leases.record(account, 0)
            assert raw is not None
            seen.append(msgspec.json.decode(raw, type=SlotRecord))
            raise AuthError(account, "token endpoint failed: TimeoutError")  # may have minted

    minter = Crashing(None, base_url="x")  # type: ignore[arg-type]  # it never sends
    tokens = Tokens(KeyPair(KEY_ID, Secret(API_KEY)), minter=minter, leases=leases)
    pool = tokens.pool(A)
    pool.want_more()
    await wait_until_async(lambda: bool(seen), timeout_s=10)
    assert len(seen[0].mints) == 1
    # It may have happened: it still counts against the slot's budget.
    raw = leases.record(A, 0)
    assert raw is not None
    assert len(msgspec.json.decode(raw, type=SlotRecord).mints) == 1
    assert pool.mints_refused == 0
    await tokens.close()


async def test_a_refused_mint_is_counted_said_and_tried_again_after_retry_after(
    session: aiohttp.ClientSession,
) -> None:
    clock = ManualClock()
    config = SandboxConfig(key_id=KEY_ID, api_key=API_KEY, mint_limit=1, mint_window_s=120)
    async with Sandbox(config, clock=clock) as sandbox:
        leases = LocalLeases(10)
        tokens = Tokens(
            KeyPair(KEY_ID, Secret(API_KEY)),
            minter=Minter(session, base_url=sandbox.url),
            leases=leases,
        )
        pool = tokens.pool(A)
        pool.want_more()
        await wait_until_async(lambda: len(pool.held) == 1, timeout_s=10)
        pool.refused(next(iter(pool.held.values())), 0.0)
        pool.want_more()
        await wait_until_async(lambda: pool.mints_refused == 1, timeout_s=10)
        report = pool.report()
        assert report.live == 0
        assert report.waiting is not None
        assert "answered 429" in report.waiting
        assert "next attempt at" in report.waiting
        # The refusal did not spend the slot's budget: its record holds no mint for it.
        raw = leases.record(A, 1)
        assert raw is not None
        assert msgspec.json.decode(raw, type=SlotRecord).mints == []
        assert tokens.mint_count == 2  # answers from the token endpoint
        await tokens.close()


# -- credentials --------------------------------------------------------------------------------


def test_a_credentials_file_is_json_or_toml_and_never_shows_a_secret(tmp_path: Path) -> None:
    other = "7f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a12"
    as_json = {A.upper(): {"key_id": "k", "api_key": "s3cret"}, other: {"tokens": ["t1", "t2"]}}
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps(as_json))
    source = CredentialsFile(str(path))
    assert source.credentials(A).key_id == "k"
    assert [t.reveal() for t in source.credentials(other).tokens] == ["t1", "t2"]
    with pytest.raises(AuthError, match="no credentials for this account"):
        source.credentials("0d3f5a4e-1c2b-4e6f-8a9b-7c6d5e4f3a2b")
    path.write_text(f'["{A}"]\ntokens = ["rotated"]\n')  # TOML, re-read when it changes
    assert source.changed()
    assert [t.reveal() for t in source.credentials(A).tokens] == ["rotated"]
    assert not source.changed()
    bad: object
    for bad in (
        {A: {"key_id": "k"}},
        {A: {"tokens": []}},
        {A: {"tokens": ["t"], "key_id": "k", "api_key": "s3cret"}},
        [A],
    ):
        with pytest.raises(ValueError, match=A[:8] + "|account ids") as caught:
            parse_credentials(json.dumps(bad))
        assert "s3cret" not in str(caught.value)
    path.write_text('{"broken": "s3cret"')
    with pytest.raises(AuthError) as caught_auth:
        source.credentials(A)
    assert "s3cret" not in str(caught_auth.value)


# -- delivery -----------------------------------------------------------------------------------


async def test_a_429_costs_one_request_and_the_batch_goes_to_the_next_token(
    session: aiohttp.ClientSession,
) -> None:
    static = ("t0", "t1", "t2")
    config = SandboxConfig(static_tokens=static, rate_limit_rps=None, token_rate_limit=600)
    async with Sandbox(config) as sandbox:
        sandbox.set_faults(throttle_next=1, throttle_retry_after_s=30)
        tokens = Tokens(
            StaticTokens([Secret(t) for t in static]),
            leases=LocalLeases(3),
            requests_per_minute=600,
        )
        delivery, recorder = engine(
            session, sandbox.url, tokens=tokens, linger_s=0.01, rate_limit_rps=None
        )
        started = time.monotonic()
        for n in range(30 * 10):
            delivery.submit(Pending(record(n), n))
        delivery.flush_open()
        await recorder.until_resolved(300)
        elapsed = time.monotonic() - started
        await delivery.close()
        await tokens.close()
        stats = sandbox.stats().accounts[A]
    # The 429 held back only its token (for its 30 s Retry-After); the others carried the rest.
    assert stats.requests == {"429": 1, "200": 1}
    assert stats.throttled_by == {"injected": 1}
    assert elapsed < 10.0
    assert sorted(recorder.sources) == list(range(300))


async def test_requests_spread_over_the_tokens_at_each_tokens_pace(
    session: aiohttp.ClientSession,
) -> None:
    static = ("t0", "t1", "t2")
    config = SandboxConfig(
        static_tokens=static, rate_limit_rps=None, token_rate_limit=600, token_window_s=60
    )
    async with Sandbox(config) as sandbox:
        tokens = Tokens(
            StaticTokens([Secret(t) for t in static]),
            leases=LocalLeases(3),
            requests_per_minute=600,  # 10 a second each: 30 a second for the pool
        )
        delivery, recorder = engine(
            session, sandbox.url, tokens=tokens, rate_limit_rps=None, max_records=1
        )
        for n in range(60):
            delivery.submit(Pending(record(n), n))  # one record a request: 60 requests
        await recorder.until_resolved(60)
        times = sorted(t for _, _, t in recorder.batches)
        await delivery.close()
        report = tokens.report()[A]
        await tokens.close()
        stats = sandbox.stats().accounts[A]
    assert stats.requests == {"200": 60}
    assert sorted(Counter(report.requests).values()) == [20, 20, 20]  # each token its share
    # 60 requests at 30 a second, after the first spacing: about two seconds, not at once.
    assert 1.5 < times[-1] - times[0] < 4.0
    assert max(u.peak for u in stats.token_use.values()) <= 600


async def test_batches_that_wait_for_a_token_go_as_one_request(
    session: aiohttp.ClientSession,
) -> None:
    """Batches closed while the only token waits for its next slot become one request: a trickle
    sends fuller requests, not one per linger, and asks for no second token."""
    async with Sandbox(SandboxConfig(static_token=TOKEN, rate_limit_rps=None)) as sandbox:
        tokens = Tokens(
            StaticTokens([Secret(TOKEN)]), leases=LocalLeases(1), requests_per_minute=60
        )
        delivery, recorder = engine(session, sandbox.url, tokens=tokens, rate_limit_rps=None)
        delivery.submit(Pending(record(0), 0))
        delivery.flush_open()
        await recorder.until_resolved(1)  # the token's next slot is about a second away
        for n in range(1, 4):
            delivery.submit(Pending(record(n), n))
            delivery.flush_open()
            for _ in range(5):
                await asyncio.sleep(0)  # the dispatcher wakes; the batches wait for the slot
        await recorder.until_resolved(4)
        await delivery.close()
        await tokens.close()
    assert [len(b.items) for b, _, _ in recorder.batches] == [1, 3]
    assert sandbox.stats().totals.requests == {"200": 2}
