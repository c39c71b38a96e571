"""The sandbox's single-record endpoints (issue 16): v1 and v2, the batch rules for one record, the
per-token limit of 100 a second apart from the batch quota, and which path the ledger says each
record took. On a ``ManualClock``: no test sleeps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
import pytest

from stream.sandbox import ManualClock, Sandbox, SandboxConfig
from tests.support.sandbox import SandboxFactory

ACCOUNT = "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11"
LABEL = "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"
TOKEN, OTHER_TOKEN = "static-test-token", "another-static-token"
HOUR_MS = 3_600_000
PROCESSED = {"status_info": {"status": "success", "message": "Record processed successfully"}}

StartSandbox = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
def start(sandbox_factory: SandboxFactory, clock: ManualClock) -> StartSandbox:
    async def create(**config: Any) -> Sandbox:
        settings: dict[str, Any] = {
            "static_tokens": (TOKEN, OTHER_TOKEN),
            "labels": {ACCOUNT: frozenset({LABEL})},
            "rate_limit_rps": 1,
        }
        return await sandbox_factory(SandboxConfig(**(settings | config)), clock=clock)

    return create


def record(clock: ManualClock, version: str = "v1", **fields: Any) -> dict[str, Any]:
    now_ms = int(clock.time() * 1000)
    names = ("caller", "receiver") if version == "v1" else ("caller_number", "receiver_number")
    body = {
        names[0]: "918040001000",
        names[1]: "919800000001",
        "label_id": LABEL,
        "starts_at": now_ms,
        "ends_at": now_ms + HOUR_MS,
    }
    return body | fields


async def send(
    session: aiohttp.ClientSession,
    sandbox: Sandbox,
    body: dict[str, Any],
    *,
    version: str = "v1",
    token: str = TOKEN,
    path: str = "dynamic_call_record",
) -> tuple[int, Any]:
    prefix = "/v2" if version == "v2" else ""
    url = f"{sandbox.url}{prefix}/clients/{ACCOUNT}/{path}"
    headers = {"Authorization": f"Bearer {token}"}
    async with session.post(url, json=body, headers=headers) as response:
        return response.status, msgspec.json.decode(await response.read())


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_a_record_is_processed_and_the_ledger_says_realtime(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock, version: str
) -> None:
    sandbox = await start()
    status, body = await send(session, sandbox, record(clock, version), version=version)
    assert (status, body) == (200, PROCESSED)
    [accepted] = sandbox.accepted()
    assert (accepted.path, accepted.api_version, accepted.batch_id) == ("realtime", version, "")
    assert accepted.receiver == "919800000001"
    stats = sandbox.stats().accounts[ACCOUNT]
    assert (stats.records_accepted, stats.realtime_accepted) == (1, 1)
    assert stats.realtime_requests == {"200": 1}
    assert stats.requests == {}


async def test_a_refused_record_is_a_400_naming_the_field(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start()
    now_ms = int(clock.time() * 1000)
    late = record(clock, "v2", starts_at=now_ms - 2 * HOUR_MS, ends_at=now_ms - HOUR_MS)
    status, body = await send(session, sandbox, late, version="v2")
    assert status == 400
    assert body["field"] == "ends_at"
    assert body["status"] == "error"
    assert body["message"].startswith("Request body is invalid: ")
    missing = record(clock, "v2", caller_number=None)
    status, body = await send(session, sandbox, missing, version="v2")
    assert (status, body["field"], body["status"]) == (400, "caller_number", "error")
    assert sandbox.accepted() == []


async def test_100_records_a_second_per_token_then_429_apart_from_the_batch_quota(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start(rate_limit_rps=1, token_rate_limit=1)
    for _ in range(100):
        assert (await send(session, sandbox, record(clock)))[0] == 200
    assert (await send(session, sandbox, record(clock)))[0] == 429
    # The other token has a window of its own; the batch endpoint's quotas are untouched.
    assert (await send(session, sandbox, record(clock), token=OTHER_TOKEN))[0] == 200
    batch = {"call_records": [record(clock)]}
    assert (await send(session, sandbox, batch, path="dynamic_call_records"))[0] == 200
    clock.advance(1.0)
    assert (await send(session, sandbox, record(clock)))[0] == 200
    stats = sandbox.stats().accounts[ACCOUNT]
    assert stats.throttled_by == {"realtime": 1}
    assert stats.realtime_requests == {"200": 102, "429": 1}
    assert stats.token_use["static-0"].realtime_peak == 101
    assert stats.token_use["static-0"].realtime_throttled == 1
    paths = [r.path for r in sandbox.accepted()]
    assert (paths.count("realtime"), paths.count("batch")) == (102, 1)


async def test_the_record_limit_is_configurable_and_faults_apply(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start(record_rate_limit=2)
    assert [(await send(session, sandbox, record(clock)))[0] for _ in range(3)] == [200, 200, 429]
    sandbox.set_faults(fail_next=1)
    clock.advance(1.0)
    assert (await send(session, sandbox, record(clock)))[0] // 100 == 5
    with pytest.raises(ValueError, match="record_rate_limit"):
        SandboxConfig(record_rate_limit=0)
