"""Token lifetimes and the mint budget as settings (``stream.minting.MintBudget``): a day of token
generations, run in compressed time against the sandbox with the same numbers scaled down."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from stream.config import load
from stream.credentials import KeyPair
from stream.minting import MintBudget, Minter
from stream.sandbox import ManualClock, Sandbox, SandboxConfig
from stream.secrets import Secret
from stream.tokens import Tokens
from stream.wire import make_session
from tests.support.waiting import wait_until_async
from tests.unit.test_token_pool import API_KEY, KEY_ID, Wall

A = "0b5f7a52-0c4a-4f1e-9d7e-3a9c1d2e4f50"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(timeout_s=10) as s:
        yield s


def test_the_documented_numbers_are_the_defaults() -> None:
    budget = load({"DCR_API_BASE_URL": "http://api", "DCR_API_TOKEN": "t"}).minting
    assert budget == MintBudget(3600.0, 10, 1800.0)
    assert budget.refresh_after_s == 3000.0  # ten minutes before the hour
    assert budget.per_slot(10) == 1
    assert budget.per_slot(3) == 3
    assert budget.allowed_at([100.0], per_slot=1) == 100.0 + 1800 + 10


def test_the_numbers_scale_down_for_a_compressed_run() -> None:
    budget = load(
        {
            "DCR_API_BASE_URL": "http://api",
            "DCR_API_TOKEN": "t",
            "DCR_TOKEN_LIFETIME_S": "120",
            "DCR_MINT_BUDGET": "10",
            "DCR_MINT_WINDOW_S": "60",
        }
    ).minting
    assert budget.refresh_after_s == 100.0  # a sixth of a short life
    assert budget.recent([0.0, 30.0, 59.0], now=61.5) == [30.0, 59.0]  # 60 s plus 1 s margin
    assert str(budget) == "10 per 60 s"


async def test_six_token_generations_renew_the_whole_pool_inside_the_budget(
    session: aiohttp.ClientSession,
) -> None:
    """Tokens living 120 s, 10 mints per 60 s (the sandbox's and the service's numbers alike):
    over six lifetimes all ten slots always hold a live token, each renewed before it ends, and
    the sandbox never refuses a mint."""
    clock, wall = ManualClock(), Wall()
    config = SandboxConfig(
        key_id=KEY_ID, api_key=API_KEY, token_lifetime_s=120, mint_window_s=60, mint_limit=10
    )
    async with Sandbox(config, clock=clock) as sandbox:
        tokens = Tokens(
            KeyPair(KEY_ID, Secret(API_KEY)),
            minter=Minter(session, base_url=sandbox.url),
            wall=wall,
            budget=MintBudget(lifetime_s=120, mints=10, window_s=60),
        )
        pool = tokens.pool(A)
        for n in range(1, 11):
            pool.want_more()
            await wait_until_async(lambda n=n: len(pool.held) == n, timeout_s=10)  # type: ignore[misc]
        started = wall.now
        while wall.now - started < 6 * 120:
            wall.now += 5
            clock.advance(5)
            pool.wake()
            # Every slot holds a token that has not reached its refresh age (100 s) once the pool
            # has looked: renewed in time, never expired, never missing.
            await wait_until_async(
                lambda: (
                    len(pool.held) == 10
                    and all(wall.now - (h.minted_at or 0) < 100 for h in pool.held.values())
                ),
                timeout_s=10,
            )
        minted = sandbox.stats().totals.tokens
        assert "429" not in minted, minted
        assert minted["200"] >= 10 + 6 * 10  # at least one renewal per slot and lifetime
        assert pool.mints_held_back == 0
        await tokens.close()
