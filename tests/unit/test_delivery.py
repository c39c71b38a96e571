"""The delivery engine against the sandbox over real HTTP on loopback (issue 4's acceptance)."""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import aiohttp
import pytest

from stream.batching import Pending
from stream.held import Held
from stream.pacing import Slots
from stream.pool import TokenPool
from stream.sandbox import ManualClock, Sandbox, SandboxConfig
from stream.secrets import Secret
from stream.tokens import MintedTokens, TokenFile
from tests.support.delivery import DEADLINE_S, LABEL, TOKEN, A, B, engine, record, session
from tests.support.waiting import wait_until_async

__all__ = ["session"]  # the fixture

UNKNOWN_LABEL = "1b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"


def batch_sizes(sandbox: Sandbox) -> list[int]:
    return list(Counter(r.batch_id for r in sandbox.accepted()).values())


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_1200_records_make_exactly_three_requests(
    session: aiohttp.ClientSession, version: Literal["v1", "v2"]
) -> None:
    async with Sandbox(SandboxConfig(static_token=TOKEN, rate_limit_rps=100)) as sandbox:
        delivery, recorder = engine(session, sandbox.url, linger_s=0.2, version=version)
        for n in range(1200):
            delivery.submit(Pending(record(n), n))
        await recorder.until_resolved(1200)
        await delivery.close()
    assert batch_sizes(sandbox) == [500, 500, 200]
    assert sorted(recorder.sources) == list(range(1200))
    assert sandbox.stats().totals.requests == {"200": 3}
    if version == "v2":
        assert all(response.batch_id for _, response, _ in recorder.batches)


async def test_a_lone_record_waits_for_the_linger(session: aiohttp.ClientSession) -> None:
    async with Sandbox(SandboxConfig(static_token=TOKEN)) as sandbox:
        delivery, recorder = engine(session, sandbox.url, linger_s=0.2)
        submitted = time.monotonic()
        delivery.submit(Pending(record(1), 1))
        await recorder.until_resolved(1)
        await delivery.close()
    waited = recorder.batches[0][2] - submitted
    assert waited >= 0.2
    assert batch_sizes(sandbox) == [1]


async def test_a_dispatcher_that_fails_runs_again(
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in an account's dispatcher is logged and the dispatcher starts again: its records do
    not wait for ever (and their partitions stay committable)."""
    monkeypatch.setattr("stream.lanes._RESTART_S", 0.01)
    calls = itertools.count()
    usable = TokenPool.usable

    def failing_once(pool: TokenPool) -> list[Held]:
        if next(calls) == 0:
            raise RuntimeError("a bug")
        return usable(pool)

    monkeypatch.setattr(TokenPool, "usable", failing_once)
    async with Sandbox(SandboxConfig(static_token=TOKEN)) as sandbox:
        delivery, recorder = engine(session, sandbox.url, linger_s=0.01)
        for n in range(3):
            delivery.submit(Pending(record(n), n))
        await recorder.until_resolved(3)
        await delivery.close()
    assert sorted(recorder.sources) == [0, 1, 2]
    assert f"the dispatcher of account {A} failed" in caplog.text


async def test_two_accounts_never_share_a_request(session: aiohttp.ClientSession) -> None:
    async with Sandbox(SandboxConfig(static_token=TOKEN)) as sandbox:
        delivery, recorder = engine(session, sandbox.url, linger_s=0.05)
        for n in range(700):
            delivery.submit(Pending(record(n, A if n % 3 else B), n))
        await recorder.until_resolved(700)
        await delivery.close()
    for r in sandbox.accepted():
        n = int(r.receiver[4:])
        assert r.account == (A if n % 3 else B)
    accounts_per_batch = {(r.batch_id, r.account) for r in sandbox.accepted()}
    assert len(accounts_per_batch) == len({r.batch_id for r in sandbox.accepted()})


async def test_quota_of_10_per_second_is_kept(session: aiohttp.ClientSession) -> None:
    async with Sandbox(SandboxConfig(static_token=TOKEN, rate_limit_rps=10)) as sandbox:
        delivery, recorder = engine(session, sandbox.url, rate_limit_rps=10)
        for n in range(100 * 500):
            delivery.submit(Pending(record(n), n))
        await recorder.until_resolved(50_000)
        await delivery.close()
        stats = sandbox.stats().totals
    requests = sum(stats.requests.values())
    assert stats.throttled < 0.02 * requests
    arrivals = sorted({r.received_monotonic_ms for r in sandbox.accepted()})
    assert len(arrivals) == 100
    # No rolling second holds more than 10 accepted requests.
    assert all(b - a >= 1000 for a, b in zip(arrivals, arrivals[10:], strict=False))


async def test_errors_and_429_bursts_lose_nothing(session: aiohttp.ClientSession) -> None:
    config = SandboxConfig(static_token=TOKEN, rate_limit_rps=1000, seed=7)
    async with Sandbox(config) as sandbox:
        sandbox.set_faults(error_rate=0.3)
        delivery, recorder = engine(session, sandbox.url, linger_s=0.01)
        for round_ in range(5):  # a 429 burst per round, with and without Retry-After
            sandbox.set_faults(throttle_next=3, throttle_retry_after_s=1 if round_ % 2 else None)
            for n in range(round_ * 1000, round_ * 1000 + 1000):
                delivery.submit(Pending(record(n), n))
            await recorder.until_resolved((round_ + 1) * 1000)
        await delivery.close()
        stats = sandbox.stats().totals
    assert recorder.dead == []
    accepted = sorted(int(r.receiver[4:]) for r in sandbox.accepted())
    assert accepted == sorted(recorder.sources) == list(range(5000))
    assert stats.throttled == 15
    assert sum(n for status, n in stats.requests.items() if status.startswith("5")) > 0


async def test_records_of_a_revoked_partition_are_not_sent(session: aiohttp.ClientSession) -> None:
    async with Sandbox(SandboxConfig(static_token=TOKEN)) as sandbox:
        delivery, recorder = engine(session, sandbox.url, rate_limit_rps=1)
        for n in range(1500):  # three batches; one request a second
            delivery.submit(Pending(record(n), n))
        await recorder.until_resolved(500)
        recorder.revoked |= set(range(500, 1500))
        delivery.drop_unowned()
        assert sorted(recorder.counted_out) == list(range(500, 1500))
        assert not delivery.sending_unowned()
        await delivery.close()
    assert sorted(int(r.receiver[4:]) for r in sandbox.accepted()) == list(range(500))


async def test_a_retry_of_a_revoked_partition_is_dropped_when_it_would_go(
    session: aiohttp.ClientSession,
) -> None:
    async with Sandbox(SandboxConfig(static_token=TOKEN)) as sandbox:
        sandbox.set_faults(outage="503")
        delivery, recorder = engine(session, sandbox.url)
        for n in range(500):
            delivery.submit(Pending(record(n), n))
        delivery.flush_open()
        await wait_until_async(
            lambda: "503" in sandbox.stats().totals.requests, timeout_s=DEADLINE_S, what="a 503"
        )
        recorder.revoked |= set(range(500))  # the batch waits out its backoff, or is on its way
        await wait_until_async(
            lambda: len(recorder.counted_out) == 500, timeout_s=DEADLINE_S, what="counted out"
        )
        sandbox.set_faults(outage="off")
        assert not delivery.sending_unowned()
        await delivery.close()
    assert sandbox.accepted() == []
    assert recorder.resolved() == 0


async def test_retry_after_is_honoured(session: aiohttp.ClientSession) -> None:
    async with Sandbox(SandboxConfig(static_token=TOKEN)) as sandbox:
        sandbox.set_faults(throttle_next=1, throttle_retry_after_s=1)
        delivery, recorder = engine(session, sandbox.url)
        started = time.monotonic()
        delivery.submit(Pending(record(1), 1))
        delivery.flush_open()
        await recorder.until_resolved(1)
        await delivery.close()
    assert recorder.batches[0][2] - started >= 1.0
    assert sandbox.stats().totals.throttled == 1


async def test_bisection_isolates_three_bad_records(session: aiohttp.ClientSession) -> None:
    config = SandboxConfig(static_token=TOKEN, labels={A: frozenset({LABEL})}, rate_limit_rps=1000)
    bad = {17, 250, 499}
    async with Sandbox(config) as sandbox:
        delivery, recorder = engine(session, sandbox.url)
        for n in range(500):
            delivery.submit(Pending(record(n, label=UNKNOWN_LABEL if n in bad else LABEL), n))
        await recorder.until_resolved(500)
        await delivery.close()
        requests = sum(sandbox.stats().totals.requests.values())
    assert sorted(recorder.sources) == sorted(set(range(500)) - bad)
    assert {n for n, _, _, _ in recorder.dead} == bad
    for _, rejection, status, body in recorder.dead:
        assert (rejection.code, rejection.stage, status) == ("api_rejected", "api", 400)
        assert body
    print(f"bisection: {requests} requests for 3 bad records in 500")
    assert requests <= 2 * 3 * 9 + 1  # 2·3·⌈log2 500⌉ + 1


async def test_expiring_minted_tokens_are_reminted(session: aiohttp.ClientSession) -> None:
    clock = ManualClock()
    config = SandboxConfig(key_id="key", api_key="secret-key", token_lifetime_s=3)
    async with Sandbox(config, clock=clock) as sandbox:
        tokens = MintedTokens(
            session, base_url=sandbox.url, key_id="key", api_key=Secret("secret-key")
        )
        delivery, recorder = engine(session, sandbox.url, tokens=tokens)
        for round_ in range(5):
            for n in range(round_ * 100, round_ * 100 + 100):
                delivery.submit(Pending(record(n), n))
            delivery.flush_open()
            await recorder.until_resolved((round_ + 1) * 100)
            clock.advance(5)  # every token minted so far has expired
        await delivery.close()
        stats = sandbox.stats().totals
    assert recorder.dead == []
    assert sorted(recorder.sources) == list(range(500))
    assert stats.tokens == {"200": 5}
    assert stats.requests["401"] == 4  # each round after the first found its token expired


async def test_a_rotated_token_file_is_picked_up(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    clock = ManualClock()
    config = SandboxConfig(key_id="key", api_key="secret-key", token_lifetime_s=3)
    async with Sandbox(config, clock=clock) as sandbox:
        minter = MintedTokens(
            session, base_url=sandbox.url, key_id="key", api_key=Secret("secret-key")
        )
        mounted = tmp_path / "token"

        async def rotate() -> None:
            # As the kubelet does: write a new file beside, then swap the link atomically.
            fresh = tmp_path / f"token-{time.monotonic_ns()}"
            fresh.write_text(await minter.get(A) + "\n")
            minter.invalidate(A, await minter.get(A))
            link = tmp_path / "token.new"
            link.symlink_to(fresh)
            os.replace(link, mounted)

        await rotate()
        delivery, recorder = engine(session, sandbox.url, tokens=TokenFile(str(mounted)))
        delivery.submit(Pending(record(1), 1))
        delivery.flush_open()
        await recorder.until_resolved(1)
        clock.advance(5)
        await rotate()
        delivery.submit(Pending(record(2), 2))
        delivery.flush_open()
        await recorder.until_resolved(2)
        await delivery.close()
        stats = sandbox.stats().totals
    assert sorted(recorder.sources) == [1, 2]
    assert "401" not in stats.requests


async def test_high_priority_takes_one_of_the_next_two_slots(
    session: aiohttp.ClientSession,
) -> None:
    async with Sandbox(SandboxConfig(static_token=TOKEN)) as sandbox:
        delivery, recorder = engine(session, sandbox.url, rate_limit_rps=5, linger_s=0.01)
        for n in range(20 * 500):
            delivery.submit(Pending(record(n), n))
        await wait_until_async(lambda: len(recorder.batches) >= 3, timeout_s=DEADLINE_S)
        sent_before = len({r.batch_id for r in sandbox.accepted()})
        delivery.submit(Pending(record(999_999, high=True), 999_999))
        await wait_until_async(lambda: 999_999 in recorder.sources, timeout_s=DEADLINE_S)
        order = list(dict.fromkeys(r.batch_id for r in sandbox.accepted()))
        position = next(
            i
            for i, b in enumerate(order)
            for r in sandbox.accepted()
            if r.batch_id == b and r.receiver == "919800999999"
        )
        await delivery.close()
    # Slots are counted from what the sandbox had received when the batch was submitted; the
    # linger (10 ms) may let one more normal batch take the slot already being waited for.
    assert position <= sent_before + 1


def test_slots_keep_a_rolling_second_and_do_not_add_up_delays() -> None:
    """Clock-free: ``wait_s`` is asked at chosen times. Every 7th request goes out 30 ms late. No 11
    requests ever fall within 1.02 s, nor any two within 0.8 of the mean spacing, and the delays
    cost less than half what they would if every request waited 102 ms after the one before."""
    slots = Slots(10.0)
    now, sent, late = 0.0, [], 0
    for n in range(200):
        delay = 0.030 if n % 7 == 3 else 0.0
        late += delay > 0
        now += slots.wait_s(now) + delay
        slots.sent.append(now)
        sent.append(now)
    assert min(b - a for a, b in zip(sent, sent[10:], strict=False)) >= 1.02 - 1e-9
    assert min(b - a for a, b in itertools.pairwise(sent)) >= 0.8 * 0.102 - 1e-9
    on_time = 9 * 0.8 * 0.102 + 19 * 1.02  # the first ten at the gap, then a window per ten
    assert sent[-1] - sent[0] - on_time < late * 0.030 / 2
    # A lower rate after a 429 still counts what was just sent.
    assert Slots(5.0, slots.sent).wait_s(now) > 0.102
