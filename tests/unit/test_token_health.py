"""Why a replica waits for tokens: readiness says it, and the metrics count what pools hold and
spend, never showing a token (docs/operations.md)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from stream.api import ApiClient
from stream.batching import Pending
from stream.credentials import CredentialsFile, KeyPair, StaticTokens, TokenFileSource
from stream.http import Health, http_app
from stream.metrics import Metrics, State
from stream.minting import Minter
from stream.retry import Backoff
from stream.sandbox import SandboxConfig
from stream.secrets import Secret
from stream.sharing import Sharing
from stream.tokens import Tokens
from stream.topics import TopicSpec
from stream.wire import make_session
from tests.support.delivery import LABEL, A, engine, record
from tests.support.metrics import idle_state
from tests.support.sandbox import SandboxFactory
from tests.support.waiting import wait_until_async
from tests.unit.test_token_pool import SomeLeases


def state(tokens: Tokens) -> State:
    return idle_state(
        token_refreshes=lambda: tokens.mint_count,
        pools=tokens.report,
        slots_held=lambda: len(tokens.leases.owned()),
    )


async def readyz(tokens: Tokens) -> tuple[int, str]:
    health = Health(
        last_poll=time.monotonic,
        threads=dict,
        ready=lambda: True,
        stall_s=60,
        unready=tokens.unready,
    )
    async with TestClient(TestServer(http_app(Metrics(), health))) as client:
        response = await client.get("/readyz")
        return response.status, (await response.json())["status"]


async def test_with_token_sharing_a_replica_without_a_slot_is_ready_on_the_shared_tokens() -> None:
    slots = TopicSpec(name="t", partitions=10)
    sharing = Sharing(
        {},
        {},
        topic="t.claims",
        slots=slots,
        requests_per_minute=60,
        loop=asyncio.get_running_loop(),
    )
    tokens = Tokens(
        StaticTokens([Secret("sekrit-0"), Secret("sekrit-1")]),
        leases=SomeLeases(10, set()),
        sharing=sharing,
    )
    pool = tokens.pool(A)
    await wait_until_async(lambda: len(pool.usable()) == 2, timeout_s=10)
    assert all(held.elsewhere for held in pool.usable())  # batches only: urgent records go batched
    assert await readyz(tokens) == (200, "ready")
    await tokens.close()


async def test_readiness_holds_no_slot_then_a_token_then_none() -> None:
    leases = SomeLeases(10, set())
    tokens = Tokens(StaticTokens([Secret("sekrit-0"), Secret("sekrit-1")]), leases=leases)
    assert await readyz(tokens) == (503, "this replica holds no slot of the token pool")
    leases.hold({1})
    pool = tokens.pool(A)
    await wait_until_async(lambda: len(pool.usable()) == 1, timeout_s=10)
    assert await readyz(tokens) == (200, "ready")
    await tokens.close()


async def test_an_account_without_a_token_is_not_ready_and_says_why() -> None:
    tokens = Tokens(TokenFileSource("/nonexistent/dcr-tokens"), leases=SomeLeases(10, {0}))
    pool = tokens.pool(A)
    await wait_until_async(lambda: pool.waiting is not None, timeout_s=10)
    status, why = await readyz(tokens)
    assert status == 503
    assert why.startswith(f"account {A} has no token to send on: ")
    assert "/nonexistent/dcr-tokens" in why
    await tokens.close()


async def test_metrics_count_tokens_slots_and_requests_never_a_token() -> None:
    tokens = Tokens(
        StaticTokens([Secret(f"sekrit-{i}") for i in range(3)]), leases=SomeLeases(3, {0, 2})
    )
    pool = tokens.pool(A)
    await wait_until_async(lambda: len(pool.usable()) == 2, timeout_s=10)
    now = asyncio.get_running_loop().time()
    for held in pool.usable():
        pool.used(held, now)
    metrics = Metrics()
    metrics.counts.bump(metrics.counts.throttled_by, (A, "request"))
    metrics.watch(state(tokens))
    text = metrics.exposition().decode()
    assert "dcr_token_slots_held 2.0" in text
    assert f'dcr_tokens_live{{account="{A}"}} 2.0' in text
    assert f'dcr_token_requests_total{{account="{A}",slot="0"}} 1.0' in text
    assert f'dcr_token_requests_total{{account="{A}",slot="2"}} 1.0' in text
    assert f'dcr_api_throttled_by_total{{account="{A}",cause="request"}} 1.0' in text
    assert f'dcr_api_throttled_by_total{{account="{A}",cause="mint"}} 0.0' in text
    assert f'dcr_token_mints_refused_total{{account="{A}"}} 0.0' in text
    assert "sekrit" not in text
    await tokens.close()


async def test_an_unreachable_token_endpoint_fails_sends_as_requests_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with make_session(timeout_s=2) as session:
        tokens = Tokens(
            KeyPair("k", Secret("sekrit-key")),
            minter=Minter(session, base_url="http://127.0.0.1:1"),  # nothing listens there
            leases=SomeLeases(10, {0}),
            backoff=(0.01, 0.05),
        )
        delivery, recorder = engine(
            session,
            "http://127.0.0.1:1",
            tokens=tokens,
            linger_s=1.0,
            rate_limit_rps=None,
            backoff=Backoff(base_s=0.01, cap_s=0.05),
        )
        delivery.submit(Pending(record(1), 1))
        delivery.flush_open()
        await wait_until_async(lambda: delivery.metrics.counts.retries >= 3, timeout_s=10)
        pool = tokens.pool(A)
        assert pool.failing is not None
        assert "token endpoint unreachable" in pool.failing
        assert (tokens.unready() or "").startswith(f"account {A} has no token to send on")
        assert recorder.resolved() == 0  # nothing lost: still retried
        await delivery.close()
        await tokens.close()
    retried = [r.message for r in caplog.records if r.message.startswith("request for account")]
    assert any("token endpoint unreachable" in m for m in retried)
    assert not any("sekrit" in r.message for r in caplog.records)


async def test_a_403_from_labels_keeps_the_token_and_a_401_mints_once(
    sandbox_factory: SandboxFactory,
) -> None:
    """A 403 is a permission answer: the pool keeps its token and mints nothing, and the metric
    counts it; a 401 says the token is dead: one mint replaces it (docs/design.md#auth)."""
    sandbox = await sandbox_factory(SandboxConfig(labels={A: frozenset({LABEL})}))
    async with make_session(timeout_s=5) as session:
        tokens = Tokens(
            KeyPair("k", Secret("sekrit-key")),
            minter=Minter(session, base_url=sandbox.url),
            # Two slots: the dead token's slot spent its mint (1 per slot of 10 per 30 minutes).
            leases=SomeLeases(10, {0, 1}),
        )
        client = ApiClient(session, base_url=sandbox.url, version="v2", tokens=tokens)
        pool = tokens.pool(A)
        assert isinstance(await client.get_labels(A, page=1, limit=10), list)
        held, mints = dict(pool.held), tokens.mint_count
        assert (len(held), mints) == (1, 1)

        sandbox.set_faults(labels_status=403)
        for _ in range(3):
            assert (
                await client.get_labels(A, page=1, limit=10) == "the labels endpoint answered 403"
            )
        assert (pool.held, tokens.mint_count) == (held, mints)
        assert sandbox.stats().accounts[A].tokens == {"200": 1}
        metrics = Metrics()
        metrics.watch(state(tokens))
        text = metrics.exposition().decode()
        assert f'dcr_api_forbidden_total{{account="{A}",endpoint="labels"}} 3.0' in text

        sandbox.set_faults(labels_status=401)
        assert await client.get_labels(A, page=1, limit=10) == "the labels endpoint answered 401"
        sandbox.set_faults(labels_status=0)
        assert isinstance(await client.get_labels(A, page=1, limit=10), list)
        assert tokens.mint_count == mints + 1
        assert pool.held != held
        await tokens.close()


async def test_an_account_refused_for_the_give_up_time_is_given_up_until_its_file_changes(
    tmp_path: Path,
) -> None:
    """No credential in the file covers the account: the clock starts at its first look, the
    account is given up on after ``give_up_s`` (by the injected wall clock), without taking the
    replica out of service; a changed file gives it a fresh start, and the pool still closes (a
    cancel that came as the file's change woke it was once swallowed)."""
    wall = [1_000.0]
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps({"00000000-0000-4000-8000-000000000001": {"tokens": ["t"]}}))
    tokens = Tokens(CredentialsFile(str(path)), wall=lambda: wall[0], give_up_s=20.0)
    pool = tokens.pool(A)
    await wait_until_async(lambda: pool.refused_since == 1_000.0, timeout_s=10)
    assert not pool.given_up()
    wall[0] += 19.9
    assert not pool.given_up()
    assert tokens.refused() == []
    wall[0] += 0.1
    assert pool.given_up()
    assert tokens.refused() == [A]
    assert tokens.unready() is None  # one refused account does not make the replica unready
    assert pool.report().auth_refused == 1

    path.write_text(json.dumps({A: {"tokens": ["sekrit-a"]}}))
    assert len(pool.usable()) == 1  # read again at once: the file changed
    assert pool.refused_since is None
    assert not pool.given_up()

    await tokens.close()
