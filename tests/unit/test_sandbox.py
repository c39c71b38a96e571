"""The sandbox over real HTTP on loopback: the API's rules, quota, tokens, faults, control, CLI.

Time is a ``ManualClock`` wherever it matters (quota, expiry, mint limit, outage windows), so no
test sleeps; only injected latency is real time, and only its lower bound is asserted.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from stream.cli import main
from stream.sandbox import (
    Accepted,
    Faults,
    ManualClock,
    Sandbox,
    SandboxConfig,
    parse_labels,
)
from tests.support.sandbox import SandboxFactory

ACCOUNT = "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11"
OTHER_ACCOUNT = "0d3f5a4e-1c2b-4e6f-8a9b-7c6d5e4f3a2b"
LABEL = "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"
TOKEN = "static-test-token"
HOUR_MS = 3_600_000
DCR_STREAM = Path(sys.executable).parent / "dcr-stream"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


StartSandbox = Callable[..., Awaitable[Sandbox]]
"""``await start(**SandboxConfig fields)``."""


@pytest.fixture
def start(sandbox_factory: SandboxFactory, clock: ManualClock) -> Callable[..., Any]:
    """``await start(**config)``: on the manual clock, with the static token and ACCOUNT's label."""

    async def create(**config: Any) -> Sandbox:
        settings: dict[str, Any] = {"static_token": TOKEN, "labels": {ACCOUNT: frozenset({LABEL})}}
        return await sandbox_factory(SandboxConfig(**(settings | config)), clock=clock)

    return create


def v1(clock: ManualClock, **fields: Any) -> dict[str, Any]:
    now_ms = int(clock.time() * 1000)
    record = {
        "caller": "918040001000",
        "receiver": "919800000001",
        "label_id": LABEL,
        "starts_at": now_ms,
        "ends_at": now_ms + HOUR_MS,
    }
    return {key: value for key, value in (record | fields).items() if value is not ...}


def v2(clock: ManualClock, **fields: Any) -> dict[str, Any]:
    record = v1(clock)
    renamed = {
        "caller_number": record.pop("caller"),
        "receiver_number": record.pop("receiver"),
        **record,
    }
    return {key: value for key, value in (renamed | fields).items() if value is not ...}


class Answer(msgspec.Struct):
    status: int
    headers: dict[str, str]
    body: Any


async def post(
    session: aiohttp.ClientSession,
    sandbox: Sandbox,
    records: list[dict[str, Any]],
    *,
    version: str = "v1",
    account: str = ACCOUNT,
    token: str | None = TOKEN,
    body: bytes | None = None,
    content_type: str = "application/json",
) -> Answer:
    prefix = "/v2" if version == "v2" else ""
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = msgspec.json.encode({"call_records": records}) if body is None else body
    url = f"{sandbox.url}{prefix}/clients/{account}/dynamic_call_records"
    async with session.post(url, data=data, headers=headers) as response:
        return Answer(
            response.status, dict(response.headers), msgspec.json.decode(await response.read())
        )


async def mint(
    session: aiohttp.ClientSession,
    sandbox: Sandbox,
    *,
    account: str = ACCOUNT,
    key_id: str = "K",
    api_key: str = "S",
    public: bool = True,
) -> Answer:
    headers = {"X-Public-Access": "allow"} if public else {}
    async with session.post(
        f"{sandbox.url}/clients/{account}/token",
        json={"key_id": key_id, "api_key": api_key},
        headers=headers,
    ) as response:
        return Answer(
            response.status, dict(response.headers), msgspec.json.decode(await response.read())
        )


# The two versions and what is recorded


async def test_v1_batch_is_accepted_and_recorded_normalised(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start()
    records = [
        v1(clock, caller="+91 80 4000 1000", label_name="Delivery", call_reason="Your order ships"),
        v1(clock, receiver="919800000002"),
    ]
    answer = await post(session, sandbox, records)
    accepted = sandbox.accepted()
    # v1 names its batch only in the message text.
    message = f"Records Uploaded Successfully. BatchID: {accepted[0].batch_id}"
    assert (answer.status, answer.body) == (200, {"message": message})
    assert [r.caller for r in accepted] == ["918040001000", "918040001000"]
    assert accepted[0].label_name == "Delivery"
    assert accepted[0].call_reason == "Your order ships"
    assert accepted[1].label_name is None
    assert {r.api_version for r in accepted} == {"v1"}
    assert {r.received_ms for r in accepted} == {int(clock.time() * 1000)}
    assert sandbox.stats().totals.records_accepted == 2


async def test_v2_batch_returns_a_batch_id_and_is_recorded(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start()
    record = v2(clock, dynamic_label_name="Delivery", dynamic_call_reason="Your order ships")
    answer = await post(session, sandbox, [record], version="v2")
    assert answer.status == 200
    batch_id = answer.body["batch_id"]
    assert uuid.UUID(batch_id).version == 4
    [accepted] = sandbox.accepted()
    assert accepted == Accepted(
        account=ACCOUNT,
        api_version="v2",
        path="batch",
        batch_id=batch_id,
        received_ms=int(clock.time() * 1000),
        received_monotonic_ms=clock.monotonic() * 1000,
        caller=record["caller_number"],
        receiver=record["receiver_number"],
        label_id=LABEL,
        starts_at=record["starts_at"],
        ends_at=record["ends_at"],
        label_name="Delivery",
        call_reason="Your order ships",
    )


async def test_500_records_pass_and_501_are_413_with_nothing_recorded(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start()
    assert (await post(session, sandbox, [v1(clock)] * 501)).status == 413
    assert sandbox.accepted() == []
    assert (await post(session, sandbox, [v1(clock)] * 500)).status == 200
    assert len(sandbox.accepted()) == 500


async def test_one_unknown_label_refuses_the_whole_batch_naming_its_index(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start()
    records = [v1(clock)] * 500
    records[317] = v1(clock, label_id=str(uuid.uuid4()))
    answer = await post(session, sandbox, records)
    assert answer.status == 400
    assert answer.body["field"] == "call_records[317].label_id"
    assert answer.body["status"] == 400
    assert "label_not_allowed" in answer.body["message"]
    assert sandbox.accepted() == []
    assert sandbox.stats().totals.records_accepted == 0


async def test_an_account_without_labels_accepts_any_label(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start()
    record = v1(clock, label_id=str(uuid.uuid4()))
    assert (await post(session, sandbox, [record], account=OTHER_ACCOUNT)).status == 200


@pytest.mark.parametrize(
    ("fields", "field", "code"),
    [
        ({"caller": "1234567"}, "caller", "invalid_phone"),
        ({"receiver": "91980000000a"}, "receiver", "invalid_phone"),
        ({"label_id": "not-a-uuid"}, "label_id", "invalid_uuid"),
        ({"label_name": "x" * 41}, "label_name", "label_name_length"),
        ({"call_reason": "Too short"}, "call_reason", "call_reason_length"),
        ({"call_reason": "Your order #12 ships"}, "call_reason", "call_reason_characters"),
        ({"call_reason": "Your order ships."}, "call_reason", "call_reason_edges"),
        ({"starts_at": 1_700_000_000}, "starts_at", "timestamp_seconds"),
        ({"ends_at": 1_700_000_000_000_000}, "ends_at", "timestamp_microseconds"),
        ({"ends_at": 0.5}, "ends_at", None),
        ({"caller": ...}, "caller", None),
        ({"label_name": None}, "label_name", None),
    ],
)
async def test_each_rule_refuses_the_batch(
    start: StartSandbox,
    session: aiohttp.ClientSession,
    clock: ManualClock,
    fields: dict[str, Any],
    field: str,
    code: str | None,
) -> None:
    sandbox = await start()
    answer = await post(session, sandbox, [v1(clock), v1(clock, **fields)])
    assert answer.status == 400
    assert answer.body["field"] == f"call_records[1].{field}"
    assert answer.body["message"].startswith("call_records[1]: ")
    if code is not None:
        assert f"({code})" in answer.body["message"]
    assert sandbox.accepted() == []


async def test_the_window_and_expiry_rules_use_the_sandbox_clock(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start()
    now_ms = int(clock.time() * 1000)
    cases = {
        "window_inverted": v1(clock, starts_at=now_ms + 2 * HOUR_MS),
        "window_too_long": v1(clock, ends_at=now_ms + 25 * HOUR_MS),
    }
    for code, record in cases.items():
        answer = await post(session, sandbox, [record])
        assert (answer.status, answer.body["field"]) == (400, "call_records[0].ends_at")
        assert f"({code})" in answer.body["message"]
    record = v1(clock)
    clock.advance(HOUR_MS / 1000 + 1)
    answer = await post(session, sandbox, [record])
    assert answer.status == 400
    assert "(expired)" in answer.body["message"]


async def test_v2_refusals_name_the_v2_field_and_reject_v1_records(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start()
    answer = await post(
        session, sandbox, [v2(clock, dynamic_call_reason="Too short")], version="v2"
    )
    assert answer.body["field"] == "call_records[0].dynamic_call_reason"
    answer = await post(session, sandbox, [v1(clock)], version="v2")
    assert (answer.status, answer.body["field"]) == (400, "call_records[0].caller_number")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[]", 400),
        (b'{"records": []}', 400),
        (b'{"call_records": []}', 400),
        (b'{"call_records": [1]}', 400),
    ],
)
async def test_a_body_that_is_not_a_batch_is_400(
    start: StartSandbox, session: aiohttp.ClientSession, body: bytes, status: int
) -> None:
    sandbox = await start()
    assert (await post(session, sandbox, [], body=body)).status == status


async def test_a_body_that_is_not_json_content_is_415(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start()
    answer = await post(session, sandbox, [v1(clock)], content_type="text/plain")
    assert answer.status == 415


# Quota


async def test_eleven_requests_in_one_second_get_exactly_one_429(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start(rate_limit_rps=10)
    answers = await asyncio.gather(*(post(session, sandbox, [v1(clock)]) for _ in range(11)))
    statuses = sorted(a.status for a in answers)
    assert statuses == [200] * 10 + [429]
    [throttled] = [a for a in answers if a.status == 429]
    assert throttled.headers["Retry-After"] == "1"
    assert throttled.body["slug"] == "too_many_requests"
    assert len(sandbox.accepted()) == 10
    assert sandbox.stats().accounts[ACCOUNT].throttled == 1
    # Another account has its own quota; the first one's frees a second later.
    assert (await post(session, sandbox, [v1(clock)], account=OTHER_ACCOUNT)).status == 200
    assert (await post(session, sandbox, [v1(clock)])).status == 429
    clock.advance(1.0)
    assert (await post(session, sandbox, [v1(clock)])).status == 200


async def test_quota_429_carries_no_retry_after_when_configured_off(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start(rate_limit_rps=1, retry_after=False)
    assert (await post(session, sandbox, [v1(clock)])).status == 200
    answer = await post(session, sandbox, [v1(clock)])
    assert answer.status == 429
    assert "Retry-After" not in answer.headers


# Tokens


async def test_requests_without_a_valid_token_are_401(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start()
    for token in (None, "wrong", ""):
        answer = await post(session, sandbox, [v1(clock)], token=token)
        assert answer.status == 401
        assert answer.body["slug"] == "unauthorized"
    assert sandbox.accepted() == []


async def test_a_minted_token_works_for_its_account_until_it_expires(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start(key_id="K", api_key="S", token_lifetime_s=600)
    minted = await mint(session, sandbox)
    assert minted.status == 200
    token = minted.body["token"]
    created_at = datetime.fromtimestamp(clock.time(), UTC).isoformat(timespec="milliseconds")
    assert minted.body["created_at"] == created_at.replace("+00:00", "Z")
    assert (await post(session, sandbox, [v1(clock)], token=token)).status == 200
    other = await post(session, sandbox, [v1(clock)], token=token, account=OTHER_ACCOUNT)
    assert other.status == 401
    clock.advance(599)
    assert (await post(session, sandbox, [v1(clock)], token=token)).status == 200
    clock.advance(1)
    assert (await post(session, sandbox, [v1(clock)], token=token)).status == 401


async def test_the_eleventh_mint_in_thirty_minutes_is_429(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start()
    for _ in range(10):
        assert (await mint(session, sandbox)).status == 200
        clock.advance(60)
    refused = await mint(session, sandbox)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == str(30 * 60 - 10 * 60)
    assert (await mint(session, sandbox, account=OTHER_ACCOUNT)).status == 200
    clock.advance(30 * 60 - 10 * 60)
    assert (await mint(session, sandbox)).status == 200
    assert sandbox.stats().accounts[ACCOUNT].tokens == {"200": 11, "429": 1}


async def test_minting_needs_the_right_key_and_the_public_access_header(
    start: StartSandbox, session: aiohttp.ClientSession
) -> None:
    sandbox = await start(key_id="K", api_key="S")
    assert (await mint(session, sandbox, api_key="wrong")).status == 401
    assert (await mint(session, sandbox, key_id="wrong")).status == 401
    assert (await mint(session, sandbox, public=False)).status == 401
    assert (await mint(session, sandbox)).status == 200


async def test_without_a_configured_key_any_key_mints(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    assert (await mint(session, sandbox, key_id="any", api_key="thing")).status == 200


# Faults


async def test_error_rate_with_a_seed_repeats_its_failures(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    runs = []
    for _ in range(2):
        sandbox = await start(rate_limit_rps=1000, seed=7, faults=Faults(error_rate=0.3))
        runs.append([(await post(session, sandbox, [v1(clock)])).status for _ in range(60)])
        assert sandbox.stats().totals.records_accepted == runs[-1].count(200)
    assert runs[0] == runs[1]
    failures = [s for s in runs[0] if s != 200]
    assert set(failures) <= {500, 502, 503}
    assert 6 <= len(failures) <= 36


async def test_a_5xx_burst_fails_the_next_requests(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start(rate_limit_rps=1000)
    sandbox.set_faults(fail_next=3, fail_status=502)
    statuses = [(await post(session, sandbox, [v1(clock)])).status for _ in range(4)]
    assert statuses == [502, 502, 502, 200]
    assert sandbox.faults.fail_next == 0
    assert len(sandbox.accepted()) == 1


@pytest.mark.parametrize("retry_after_s", [7, None])
async def test_a_429_burst_with_and_without_retry_after(
    start: StartSandbox,
    session: aiohttp.ClientSession,
    clock: ManualClock,
    retry_after_s: int | None,
) -> None:
    sandbox = await start(rate_limit_rps=1000)
    sandbox.set_faults(throttle_next=2, throttle_retry_after_s=retry_after_s)
    answers = [await post(session, sandbox, [v1(clock)]) for _ in range(3)]
    assert [a.status for a in answers] == [429, 429, 200]
    expected = None if retry_after_s is None else str(retry_after_s)
    assert answers[0].headers.get("Retry-After") == expected


async def test_an_outage_answers_503_for_its_window(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start(rate_limit_rps=1000)
    sandbox.set_faults(outage="503", outage_s=30)
    assert (await post(session, sandbox, [v1(clock)])).status == 503
    assert (await post(session, sandbox, [v1(clock)], token=None)).status == 503
    clock.advance(29)
    assert (await post(session, sandbox, [v1(clock)])).status == 503
    clock.advance(1)
    assert (await post(session, sandbox, [v1(clock)])).status == 200
    assert sandbox.faults.outage == "off"


async def test_an_outage_can_drop_connections_until_it_is_lifted(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start(rate_limit_rps=1000, faults=Faults(outage="drop"))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, sandbox, [v1(clock)])
    clock.advance(3600)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(session, sandbox, [v1(clock)])
    sandbox.set_faults(outage="off")
    assert (await post(session, sandbox, [v1(clock)])).status == 200
    assert sandbox.stats().accounts[ACCOUNT].requests == {"dropped": 2, "200": 1}


@pytest.mark.parametrize(
    "faults",
    [Faults(latency_ms=80), Faults(spike_probability=1.0, spike_ms=80)],
    ids=["fixed", "spike"],
)
async def test_latency_delays_the_answer(
    start: StartSandbox,
    session: aiohttp.ClientSession,
    clock: ManualClock,
    faults: Faults,
) -> None:
    sandbox = await start(faults=faults)
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert (await post(session, sandbox, [v1(clock)])).status == 200
    assert loop.time() - began >= 0.08


def test_faults_and_config_refuse_bad_values() -> None:
    for bad in ({"error_rate": 1.5}, {"fail_status": 404}, {"latency_ms": -1}, {"outage_s": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Faults(**bad)
    with pytest.raises(ValueError, match="rate_limit_rps"):
        SandboxConfig(rate_limit_rps=0)
    with pytest.raises(ValueError, match="go together"):
        SandboxConfig(key_id="K")
    with pytest.raises(ValueError, match="unknown_fault"):
        Sandbox().set_faults(unknown_fault=1)


def test_secrets_never_show_in_reprs() -> None:
    config = SandboxConfig(static_token="tok-secret", key_id="K", api_key="key-secret")
    for text in (repr(config), repr(Sandbox(config))):
        assert "tok-secret" not in text
        assert "key-secret" not in text
        assert "static_token=***" in text


def test_parse_labels() -> None:
    assert parse_labels(f"{ACCOUNT}={LABEL}, {LABEL.upper()}") == (
        ACCOUNT,
        frozenset({LABEL, LABEL.upper()}),
    )
    for bad in ("no-equals", "=x", f"{ACCOUNT}="):
        with pytest.raises(ValueError, match="ACCOUNT=ID1,ID2"):
            parse_labels(bad)


# Control endpoints


async def test_faults_are_set_and_read_through_the_control_endpoint(
    start: StartSandbox, session: aiohttp.ClientSession
) -> None:
    sandbox = await start()
    async with session.post(f"{sandbox.url}/_sandbox/faults", json={"error_rate": 0.5}) as r:
        assert r.status == 200
        assert (await r.json())["error_rate"] == 0.5
    async with session.post(f"{sandbox.url}/_sandbox/faults", json={"latency_ms": 5}) as r:
        assert (await r.json())["error_rate"] == 0.5
    async with session.get(f"{sandbox.url}/_sandbox/faults") as r:
        assert msgspec.convert(await r.json(), Faults) == Faults(error_rate=0.5, latency_ms=5)
    for bad in ({"error_rate": 2}, {"no_such_fault": 1}, {"outage": "maybe"}):
        async with session.post(f"{sandbox.url}/_sandbox/faults", json=bad) as r:
            assert r.status == 400
    assert sandbox.faults == Faults(error_rate=0.5, latency_ms=5)


async def test_labels_are_learned_at_run_time(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start()
    new_label = str(uuid.uuid4())
    assert (await post(session, sandbox, [v1(clock, label_id=new_label)])).status == 400
    body = {"account": ACCOUNT, "label_ids": [new_label.upper()]}
    async with session.post(f"{sandbox.url}/_sandbox/labels", json=body) as r:
        assert (await r.json()) == {"account": ACCOUNT, "label_ids": sorted([LABEL, new_label])}
    assert (await post(session, sandbox, [v1(clock, label_id=new_label)])).status == 200
    async with session.get(f"{sandbox.url}/_sandbox/labels") as r:
        assert (await r.json()) == {ACCOUNT: sorted([LABEL, new_label])}
    async with session.post(f"{sandbox.url}/_sandbox/labels", json={"account": ACCOUNT}) as r:
        assert r.status == 400


async def test_a_label_registered_upper_case_is_listed_so_and_matches_any_case(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start(labels={ACCOUNT: frozenset({LABEL.upper()})})
    async with session.get(
        f"{sandbox.url}/clients/{ACCOUNT}/labels", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as r:
        assert LABEL.upper() in [label["id"] for label in await r.json()]
    mixed = LABEL[:9] + LABEL[9:].upper()
    for label_id in (LABEL, LABEL.upper(), mixed):
        assert (await post(session, sandbox, [v1(clock, label_id=label_id)])).status == 200


async def test_stats_accepted_and_reset_over_http(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start(rate_limit_rps=1000)
    await post(session, sandbox, [v1(clock)] * 3)
    await post(session, sandbox, [v1(clock)], account=OTHER_ACCOUNT)
    await post(session, sandbox, [v1(clock)], token="wrong")
    await mint(session, sandbox)
    async with session.get(f"{sandbox.url}/_sandbox/stats") as r:
        stats = await r.json()
    assert stats["accounts"][ACCOUNT] == {
        "requests": {"200": 1, "401": 1},
        "tokens": {"200": 1},
        "records_accepted": 3,
        "throttled": 0,
    }
    assert stats["totals"]["records_accepted"] == 4
    assert stats["totals"]["requests"] == {"200": 2, "401": 1}

    async with session.get(f"{sandbox.url}/_sandbox/accepted") as r:
        assert r.content_type == "application/x-ndjson"
        lines = (await r.read()).splitlines()
    records = [msgspec.json.decode(line, type=Accepted) for line in lines]
    assert [r.account for r in records] == [ACCOUNT] * 3 + [OTHER_ACCOUNT]
    assert records == sandbox.accepted()
    async with session.get(f"{sandbox.url}/_sandbox/accepted?account={OTHER_ACCOUNT}") as r:
        assert len((await r.read()).splitlines()) == 1

    sandbox.set_faults(error_rate=1.0)
    async with session.post(f"{sandbox.url}/_sandbox/reset") as r:
        assert r.status == 200
    assert sandbox.accepted() == []
    assert sandbox.stats().totals.records_accepted == 0
    assert sandbox.faults == Faults()
    assert (await post(session, sandbox, [v1(clock)])).status == 200


async def test_account_ids_are_compared_lower_cased(
    start: StartSandbox, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    sandbox = await start()
    bad = v1(clock, label_id=str(uuid.uuid4()))
    assert (await post(session, sandbox, [bad], account=ACCOUNT.upper())).status == 400
    assert (await post(session, sandbox, [v1(clock)], account=ACCOUNT.upper())).status == 200
    assert sandbox.accepted(ACCOUNT.upper())[0].account == ACCOUNT


# TLS and the command line


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    files = ["-keyout", str(key), "-out", str(cert)]
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *files, *subject],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_it_serves_https_with_a_given_certificate(
    sandbox_factory: SandboxFactory, certificate: tuple[Path, Path], clock: ManualClock
) -> None:
    cert, key = certificate
    config = SandboxConfig(static_token=TOKEN, tls_cert=str(cert), tls_key=str(key))
    sandbox = await sandbox_factory(config, clock=clock)
    assert sandbox.url.startswith("https://127.0.0.1:")
    trust = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as session:
        assert (await post(session, sandbox, [v1(clock)])).status == 200


def test_cli_help_runs() -> None:
    result = subprocess.run(
        [str(DCR_STREAM), "sandbox", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "--rate-limit-rps" in result.stdout


@pytest.mark.parametrize(
    "flags", [["--labels", "nope"], ["--rate-limit-rps", "0"], ["--tls-cert", "c.pem"]]
)
def test_cli_refuses_bad_settings_with_status_2(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sandbox", *flags]) == 2
    assert capsys.readouterr().err.startswith("dcr-stream sandbox: ")


async def test_cli_serves_until_sigterm_and_logs_no_secrets() -> None:
    process = await asyncio.create_subprocess_exec(
        str(DCR_STREAM),
        "sandbox",
        "--port",
        "0",
        "--static-token",
        "static-secret",
        "--key-id",
        "K",
        "--api-key",
        "api-secret",
        "--log-requests",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        url = (await asyncio.wait_for(process.stdout.readline(), timeout=60)).decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        clock = ManualClock()
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{url}/clients/{ACCOUNT}/token",
                json={"key_id": "K", "api_key": "api-secret"},
                headers={"X-Public-Access": "allow"},
            ) as response:
                token = (await response.json())["token"]
            async with session.post(
                f"{url}/clients/{ACCOUNT}/dynamic_call_records",
                data=msgspec.json.encode({"call_records": [v1(clock)]}),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            ) as response:
                assert response.status == 200
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    output = stdout.decode() + stderr.decode()
    for secret in ("static-secret", "api-secret", token):
        assert secret not in output
    lines = [msgspec.json.decode(line) for line in stdout.decode().splitlines()]
    assert any("1 records accepted" in line["message"] for line in lines)
