"""The sandbox's per-token quota and its configurable mint budget (docs/sandbox.md), both sides of
each limit, on a ``ManualClock``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from stream.sandbox import ManualClock, Sandbox, SandboxConfig
from tests.support.sandbox import SandboxFactory
from tests.unit.test_sandbox import (
    ACCOUNT,
    OTHER_ACCOUNT,
    TOKEN,
    mint,
    post,
    v1,
)

OTHER_TOKEN = "second-static-token"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def documented(**changes: object) -> SandboxConfig:
    """The documented limits: 60 requests a minute per token, no per-account quota."""
    settings: dict[str, object] = {
        "static_tokens": (TOKEN, OTHER_TOKEN),
        "rate_limit_rps": None,
        "token_rate_limit": 60,
    }
    return SandboxConfig(**(settings | changes))  # type: ignore[arg-type]


async def test_a_token_gets_60_requests_in_a_rolling_minute_and_the_61st_is_429(
    sandbox_factory: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    sandbox = await sandbox_factory(documented(), clock=clock)
    for _ in range(60):
        assert (await post(session, sandbox, [v1(clock)])).status == 200
        clock.advance(0.5)  # 60 requests in 30 s: far above an even pace, within the minute
    refused = await post(session, sandbox, [v1(clock)])
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "30"  # the first of the 60 leaves the window then
    # Another token has its own window.
    assert (await post(session, sandbox, [v1(clock)], token=OTHER_TOKEN)).status == 200
    clock.advance(29.9)
    assert (await post(session, sandbox, [v1(clock)])).status == 429
    clock.advance(0.1)
    assert (await post(session, sandbox, [v1(clock)])).status == 200
    stats = sandbox.stats().accounts[ACCOUNT]
    assert stats.throttled_by == {"token": 2}
    assert stats.token_use["static-0"].requests == 63
    assert stats.token_use["static-0"].admitted == 61
    assert stats.token_use["static-0"].throttled == 2
    assert stats.token_use["static-0"].peak == 62  # the sandbox's own count, 429s included
    assert stats.token_use["static-1"].admitted == 1


async def test_a_static_token_window_is_shared_by_every_account(
    sandbox_factory: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    sandbox = await sandbox_factory(documented(token_rate_limit=2), clock=clock)
    assert (await post(session, sandbox, [v1(clock)])).status == 200
    assert (await post(session, sandbox, [v1(clock)], account=OTHER_ACCOUNT)).status == 200
    assert (await post(session, sandbox, [v1(clock)])).status == 429


async def test_a_refused_request_does_not_count_and_the_account_quota_still_applies(
    sandbox_factory: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    sandbox = await sandbox_factory(documented(token_rate_limit=3, rate_limit_rps=2), clock=clock)
    assert (await post(session, sandbox, [v1(clock)])).status == 200
    assert (await post(session, sandbox, [v1(clock)], token=OTHER_TOKEN)).status == 200
    # The account's second is full: refused for the account, not counted against the token.
    assert (await post(session, sandbox, [v1(clock)])).status == 429
    clock.advance(1.0)
    assert (await post(session, sandbox, [v1(clock)])).status == 200
    assert (await post(session, sandbox, [v1(clock)])).status == 200  # the token's third
    clock.advance(1.0)
    assert (await post(session, sandbox, [v1(clock)])).status == 429  # the token's fourth
    stats = sandbox.stats().accounts[ACCOUNT]
    assert stats.throttled_by == {"account": 1, "token": 1}


async def test_minted_tokens_each_have_their_own_window(
    sandbox_factory: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    sandbox = await sandbox_factory(documented(token_rate_limit=1), clock=clock)
    tokens = [(await mint(session, sandbox)).body["token"] for _ in range(3)]
    for token in tokens:
        assert (await post(session, sandbox, [v1(clock)], token=token)).status == 200
    for token in tokens:
        assert (await post(session, sandbox, [v1(clock)], token=token)).status == 429
    use = sandbox.stats().accounts[ACCOUNT].token_use
    assert sorted(use) == ["minted-1", "minted-2", "minted-3"]
    assert all(u.peak == 2 and u.admitted == 1 for u in use.values())


async def test_the_mint_budget_is_configurable_and_counted_by_cause(
    sandbox_factory: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    sandbox = await sandbox_factory(documented(mint_limit=2, mint_window_s=100), clock=clock)
    assert (await mint(session, sandbox)).status == 200
    assert (await mint(session, sandbox)).status == 200
    refused = await mint(session, sandbox)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "100"
    clock.advance(99.9)
    assert (await mint(session, sandbox)).status == 429
    clock.advance(0.1)
    assert (await mint(session, sandbox)).status == 200
    stats = sandbox.stats().accounts[ACCOUNT]
    assert stats.tokens == {"200": 3, "429": 2}
    assert stats.throttled_by == {"mint": 2}


async def test_without_the_per_token_limit_nothing_is_counted_per_token(
    sandbox_factory: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    clock = ManualClock()
    sandbox = await sandbox_factory(documented(token_rate_limit=None), clock=clock)
    for _ in range(100):
        assert (await post(session, sandbox, [v1(clock)])).status == 200
    assert sandbox.stats().accounts[ACCOUNT].token_use == {}


def test_limits_refuse_bad_values_and_static_tokens_stay_secret() -> None:
    for bad in (
        {"token_rate_limit": 0},
        {"mint_limit": 0},
        {"token_window_s": 0},
        {"rate_limit_rps": 0},
    ):
        with pytest.raises(ValueError, match="must be"):
            documented(**bad)
    config = documented()
    assert TOKEN not in repr(config)
    assert OTHER_TOKEN not in repr(config)
    assert config.all_static_tokens == (TOKEN, OTHER_TOKEN)


async def test_each_account_mints_with_its_own_key_pair_only() -> None:
    """A platform's accounts each have their own key pair (``--credentials-file``): the token
    endpoint takes an account's own pair and refuses another account's."""
    a, b = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
    config = SandboxConfig(key_pairs={a: ("key-a", "secret-a"), b: ("key-b", "secret-b")})
    async with Sandbox(config) as sandbox, aiohttp.ClientSession() as session:

        async def mint(account: str, key_id: str, api_key: str) -> int:
            async with session.post(
                f"{sandbox.url}/clients/{account}/token",
                json={"key_id": key_id, "api_key": api_key},
                headers={"X-Public-Access": "allow"},
            ) as r:
                return r.status

        assert await mint(a, "key-a", "secret-a") == 200
        assert await mint(b, "key-b", "secret-b") == 200
        assert await mint(a, "key-b", "secret-b") == 401
        assert "secret-a" not in repr(config)
