"""Batch statuses without a broker: the sandbox's status endpoints on a manual clock, the client's
``get_batch_status``, the verdicts and the matching, and ``dcr-stream status``
(docs/design.md#reconciliation)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import msgspec
import pytest
from confluent_kafka import KafkaError, KafkaException, Message

from stream.api import ApiClient, BatchStatus, RecordStatus, StatusAnswer, parse_batch_id
from stream.api import StatusInfo as Info
from stream.cli import main
from stream.consumer import ConsumerThread
from stream.credentials import StaticTokens
from stream.dlq import DeadLetterProducer
from stream.due import Oldest
from stream.errors import DeadLetterError, ReceiptError
from stream.metrics import Counts
from stream.offsets import Ticket
from stream.receipts import Receipt, Receipts, offset_ranges
from stream.reconcile import Reconciler
from stream.retry import AckedWriter, Backoff
from stream.sandbox import REASONS, ManualClock, Sandbox, SandboxConfig, StatusRules
from stream.sandbox.statuses import parse_failure
from stream.secrets import Secret
from stream.statuses import StatusBudget, Verdict, classify, match
from stream.tokens import StaticToken, Tokens
from stream.validation import Rejection
from tests.support.sandbox import SandboxFactory, SandboxThread
from tests.support.waiting import wait_until_async

ACCOUNT = "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11"
LABEL = "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"
TOKEN = "static-test-token"
HOUR_MS = 3_600_000
BATCH = "0d3f5a4e-1c2b-4e6f-8a9b-7c6d5e4f3a2b"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def record(clock: ManualClock, receiver: str, version: str) -> dict[str, Any]:
    now_ms = int(clock.time() * 1000)
    numbers = ("caller", "receiver") if version == "v1" else ("caller_number", "receiver_number")
    return {
        numbers[0]: "918040001000",
        numbers[1]: receiver,
        "label_id": LABEL,
        "starts_at": now_ms,
        "ends_at": now_ms + HOUR_MS,
    }


async def send(
    session: aiohttp.ClientSession,
    sandbox: Sandbox,
    clock: ManualClock,
    receivers: list[str],
    version: str,
) -> str:
    """Post one batch; its batch id, as the client reads it from either version's answer."""
    prefix = "/v2" if version == "v2" else ""
    body = {"call_records": [record(clock, r, version) for r in receivers]}
    async with session.post(
        f"{sandbox.url}{prefix}/clients/{ACCOUNT}/dynamic_call_records",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as response:
        assert response.status == 200
        batch_id = parse_batch_id(await response.read())
    assert batch_id is not None
    return batch_id


async def status(
    session: aiohttp.ClientSession,
    sandbox: Sandbox,
    batch_id: str,
    version: str,
    token: str = TOKEN,
) -> tuple[int, Any]:
    prefix = "/v2" if version == "v2" else ""
    async with session.get(
        f"{sandbox.url}{prefix}/clients/{ACCOUNT}/dynamic_call_records",
        params={"batchId": batch_id},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status, msgspec.json.decode(await response.read())


@pytest.fixture
async def sandbox(sandbox_factory: SandboxFactory, clock: ManualClock) -> Sandbox:
    rules = StatusRules(
        failures=(("+9199", "not_truecaller_user"), ("9197", "push_failed")),
        pending_s=30,
        pending_prefix="9196",
    )
    return await sandbox_factory(SandboxConfig(static_token=TOKEN, statuses=rules), clock=clock)


def virtual_time(
    monkeypatch: pytest.MonkeyPatch, loop: asyncio.AbstractEventLoop
) -> tuple[list[float], asyncio.Task[None]]:
    """Virtual time: 10 ms per turn of the loop, so a sleep ends without real waiting; the clock
    (``now[0]``) and the task that moves it (cancel it at the end)."""
    now = [loop.time()]
    monkeypatch.setattr(loop, "time", lambda: now[0])

    async def tick() -> None:
        while True:
            now[0] += 0.01
            await asyncio.sleep(0)

    return now, loop.create_task(tick())


# -- the sandbox's endpoints ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_each_record_has_its_status_by_the_rules(
    session: aiohttp.ClientSession, sandbox: Sandbox, clock: ManualClock, version: str
) -> None:
    receivers = ["919800000001", "919900000002", "919700000003", "919600000004"]
    batch_id = await send(session, sandbox, clock, receivers, version)

    code, body = await status(session, sandbox, batch_id, version)

    assert code == 200
    assert (body["client_account_id"], body["batch_id"]) == (ACCOUNT, batch_id)
    number = "receiver" if version == "v1" else "receiver_number"
    assert [entry[number] for entry in body["data"]] == receivers
    assert [entry["status_info"]["status"] for entry in body["data"]] == [
        "success",
        "failed",
        "failed",
        "pending",
    ]
    assert body["data"][1]["status_info"]["message"] == REASONS["not_truecaller_user"]
    assert len({entry["id"] for entry in body["data"]}) == 4
    stats = sandbox.stats().accounts[ACCOUNT]
    assert stats.statuses == {"200": 1}
    assert stats.requests == {"200": 1}, "a status request is not a batch request"


async def test_a_pending_record_is_final_once_its_time_is_up(
    session: aiohttp.ClientSession, sandbox: Sandbox, clock: ManualClock
) -> None:
    batch_id = await send(session, sandbox, clock, ["919600000001"], "v2")

    clock.advance(29)
    _, before = await status(session, sandbox, batch_id, "v2")
    clock.advance(1)
    _, after = await status(session, sandbox, batch_id, "v2")

    assert before["data"][0]["status_info"]["status"] == "pending"
    assert after["data"][0]["status_info"]["status"] == "success"


async def test_unknown_batch_no_batch_id_and_bad_token(
    session: aiohttp.ClientSession, sandbox: Sandbox, clock: ManualClock
) -> None:
    batch_id = await send(session, sandbox, clock, ["919800000001"], "v2")

    assert (await status(session, sandbox, BATCH, "v2"))[0] == 404
    assert (await status(session, sandbox, "", "v2"))[0] == 400
    assert (await status(session, sandbox, batch_id, "v2", token="nope"))[0] == 401


async def test_the_rules_change_while_it_runs(
    session: aiohttp.ClientSession, sandbox: Sandbox, clock: ManualClock
) -> None:
    batch_id = await send(session, sandbox, clock, ["919500000001"], "v2")
    async with session.post(
        f"{sandbox.url}/_sandbox/statuses",
        json={"failures": [["9195", "os_not_supported"]]},
    ) as response:
        assert response.status == 200
    async with session.post(
        f"{sandbox.url}/_sandbox/statuses", json={"failures": [["9195", "no_such_reason"]]}
    ) as response:
        assert response.status == 400

    _, body = await status(session, sandbox, batch_id, "v2")

    assert body["data"][0]["status_info"]["status"] == "failed"
    assert sandbox.statuses.failures == (("9195", "os_not_supported"),)
    assert sandbox.set_statuses(failures=[]).failures == ()


@pytest.mark.parametrize("version", ["v1", "v2"])
async def test_the_client_reads_a_batch_status(
    session: aiohttp.ClientSession, sandbox: Sandbox, clock: ManualClock, version: str
) -> None:
    batch_id = await send(session, sandbox, clock, ["919800000001", "919900000002"], version)
    client = ApiClient(
        session,
        base_url=sandbox.url,
        version="v2" if version == "v2" else "v1",
        tokens=StaticToken(Secret(TOKEN)),
    )

    answer = await client.get_batch_status(ACCOUNT, batch_id, TOKEN)
    missing = await client.get_batch_status(ACCOUNT, BATCH, TOKEN)

    assert answer.status == 200
    assert answer.batch is not None
    verdicts = [classify(r) for r in answer.batch.data]
    assert verdicts == [
        Verdict("delivered", message="Record pushed successfully"),
        Verdict("failed", "not_truecaller_user", REASONS["not_truecaller_user"]),
    ]
    assert (missing.status, missing.batch) == (404, None)


# -- verdicts and matching ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("info", "verdict"),
    [
        (Info("success"), Verdict("delivered")),
        (Info("pending"), Verdict("pending")),
        (
            Info("failed", "Receiver is not a Truecaller user"),
            Verdict("failed", "not_truecaller_user"),
        ),
        (Info("failed", "OS not supported"), Verdict("failed", "os_not_supported")),
        (
            Info("FAILED", None, "app_version_not_supported"),
            Verdict("failed", "app_version_not_supported"),
        ),
        (Info("failed", "Failed to push: device unreachable"), Verdict("failed", "push_failed")),
        (Info("failed", "Invalid input"), Verdict("failed", "invalid_input")),
        (Info("failed", "something else"), Verdict("failed", "unknown_status")),
        (Info("not_truecaller_user"), Verdict("failed", "not_truecaller_user")),
        (Info("mystery"), Verdict("pending")),
    ],
)
def test_a_status_is_read_as_a_verdict(info: Info, verdict: Verdict) -> None:
    found = classify(RecordStatus(status_info=info))
    assert (found.status, found.code) == (verdict.status, verdict.code)


class _Message:
    """The part of a consumed message ``match`` reads."""

    def __init__(self, value: dict[str, Any]) -> None:
        self._value = json.dumps(value).encode()

    def value(self) -> bytes:
        return self._value


def test_statuses_pair_with_their_events_by_caller_receiver_label_and_start() -> None:
    events = [
        _Message({"caller": "+91 80 4000 1000", "receiver": r, "label_id": LABEL, "starts_at": s})
        for r, s in (("919800000001", 1_000), ("919800000002", 2_000), ("919800000001", 1_000))
    ]

    def entry(receiver: str, starts_at: int | str, status: str) -> RecordStatus:
        return RecordStatus(
            caller_number="918040001000",
            receiver_number=receiver,
            label_id=LABEL.upper(),
            starts_at=starts_at,
            status_info=Info(status),
        )

    statuses = [
        entry("+919800000002", "1970-01-01T00:00:02Z", "failed"),
        entry("919800000001", 1_000, "success"),
        entry("919800000001", "1000", "pending"),
    ]

    pairs, extra = match(events, statuses)  # type: ignore[arg-type]

    assert extra == 0
    assert [s.status_info.status if s else None for _, s in pairs] == [
        "success",
        "failed",
        "pending",
    ]


def test_unmatched_statuses_pair_in_order_and_a_missing_one_is_none() -> None:
    events = [_Message({"receiver": f"91980000000{i}"}) for i in range(3)]
    statuses = [RecordStatus(receiver_number="x", status_info=Info(s)) for s in ("a", "b")]

    pairs, extra = match(events, statuses)  # type: ignore[arg-type]

    assert [s.status_info.status if s else None for _, s in pairs] == ["a", "b", None]
    assert extra == 0


def test_the_v1_batch_id_is_read_from_the_message_text() -> None:
    v1 = b'{"message": "Records Uploaded Successfully. BatchID: ' + BATCH.encode() + b'"}'
    assert parse_batch_id(v1) == BATCH
    assert parse_batch_id(b'{"batch_id": "' + BATCH.encode() + b'"}') == BATCH
    assert parse_batch_id(b'{"message": "Records Uploaded Successfully."}') is None
    assert parse_batch_id(b"not json") is None


# -- dcr-stream status ----------------------------------------------------------------------------


def test_the_status_command_prints_each_record(
    sandbox_thread: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server: SandboxThread = sandbox_thread(
        static_token=TOKEN,
        statuses=StatusRules(failures=(("9199", "not_truecaller_user"),)),
    )
    clock = ManualClock()
    body = {"call_records": [record(clock, r, "v2") for r in ("919800000001", "919900000002")]}
    answered: list[bytes] = []

    async def post() -> None:
        async with (
            aiohttp.ClientSession() as client,
            client.post(
                f"{server.url}/v2/clients/{ACCOUNT}/dynamic_call_records",
                json=body,
                headers={"Authorization": f"Bearer {TOKEN}"},
            ) as response,
        ):
            answered.append(await response.read())

    worker = threading.Thread(target=lambda: asyncio.run(post()))
    worker.start()
    worker.join(30)
    batch_id = parse_batch_id(answered[0])
    assert batch_id is not None
    for name, value in {
        "DCR_API_BASE_URL": server.url,
        "DCR_API_TOKEN": TOKEN,
        "DCR_API_VERSION": "v2",
        "DCR_CLIENT_ACCOUNT_ID": ACCOUNT,
    }.items():
        monkeypatch.setenv(name, value)

    assert main(["status", batch_id]) == 0
    out = capsys.readouterr().out
    assert "\tdelivered\t" in out
    assert "\tfailed:not_truecaller_user\tReceiver is not a Truecaller user" in out
    assert out.rstrip().endswith("2 records: 1 delivered, 1 failed:not_truecaller_user")
    assert main(["status", BATCH]) == 1


# -- the status budget ----------------------------------------------------------------------------


async def test_the_status_budget_paces_each_token_apart_from_the_batch_quota(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = Tokens(StaticTokens([Secret("a"), Secret("b")]), requests_per_minute=60)
    await tokens.get(ACCOUNT)
    held = tokens.pool(ACCOUNT).usable()
    assert len(held) == 2
    loop = asyncio.get_running_loop()
    now, ticker = virtual_time(monkeypatch, loop)
    budget = StatusBudget(tokens, 30)  # one status request per token every 2 s
    started = now[0]
    taken = []
    try:
        for _ in range(4):
            token = await budget.take(ACCOUNT)
            taken.append((token, round(now[0] - started, 1)))
    finally:
        ticker.cancel()
        await tokens.close()

    assert sorted(taken[:2]) == [("a", 0.0), ("b", 0.0)]
    assert sorted(token for token, _ in taken[2:]) == ["a", "b"]
    assert {at for _, at in taken[2:]} == {2.0}  # 0.99 of the 2 s spacing, rounded
    assert [h.pace.requests for h in held] == [0, 0], "no batch slot was taken"


async def test_the_status_budget_forgets_the_tokens_an_account_no_longer_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A day renews each token 24 times, for each account: the budget keeps the slots of the
    tokens held now only, or it grows with every token it ever saw."""
    tokens = Tokens(StaticTokens([Secret("a"), Secret("b")]), requests_per_minute=60)
    await tokens.get(ACCOUNT)
    pool = tokens.pool(ACCOUNT)
    held = pool.usable()
    loop = asyncio.get_running_loop()
    _, ticker = virtual_time(monkeypatch, loop)
    budget = StatusBudget(tokens, 30)
    try:
        assert {await budget.take(ACCOUNT) for _ in range(2)} == {"a", "b"}
        monkeypatch.setattr(pool, "usable", lambda: held[1:])  # "a" renewed away
        assert await budget.take(ACCOUNT) == "b"
    finally:
        ticker.cancel()
        await tokens.close()
    assert [token.reveal() for token in budget._slots[ACCOUNT]] == ["b"]


async def test_a_status_slot_wakes_one_waiting_request_not_every_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Receipts due queue for the budget (B7: 9 batches a second against 5 status requests); a
    slot must cost the same however many wait, not wake each of them to look at the tokens."""
    tokens = Tokens(StaticTokens([Secret("a")]), requests_per_minute=60)
    await tokens.get(ACCOUNT)
    pool = tokens.pool(ACCOUNT)
    looks = []
    usable = pool.usable

    def looked() -> Any:
        looks.append(1)
        return usable()

    monkeypatch.setattr(pool, "usable", looked)
    loop = asyncio.get_running_loop()
    _, ticker = virtual_time(monkeypatch, loop)
    budget = StatusBudget(tokens, 30)  # one status request every 2 s
    waiting = [loop.create_task(budget.take(ACCOUNT)) for _ in range(100)]
    try:
        await waiting[0]
        looks.clear()
        await asyncio.gather(*waiting[1:6])
    finally:
        ticker.cancel()
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await tokens.close()

    assert [t for t in waiting if not t.cancelled()] == waiting[:6], "in the order asked"
    assert len(looks) <= 2 * 5 + 2, "each of 5 slots looked at the tokens once or twice"


def test_status_rules_refuse_unknown_reasons_and_empty_prefixes() -> None:
    assert parse_failure("push_failed=+9197") == ("+9197", "push_failed")
    for bad in ("pushed=9197", "push_failed=", "push_failed=+"):
        with pytest.raises(ValueError, match="REASON=PREFIX"):
            parse_failure(bad)
    with pytest.raises(ValueError, match="unknown reason"):
        StatusRules(failures=(("9197", "busy"),))
    with pytest.raises(ValueError, match="pending_s"):
        StatusRules().changed(pending_s=-1)


def test_the_sandbox_command_refuses_a_bad_failure_rule(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["sandbox", "--fail-prefix", "busy=9197"]) == 2
    assert "REASON=PREFIX" in capsys.readouterr().err


# -- one receipt's report ------------------------------------------------------------------------


class _Source(_Message):
    def __init__(self, offset: int, receiver: str) -> None:
        super().__init__({"caller": "918040001000", "receiver": receiver, "label_id": LABEL})
        self._offset = offset

    def topic(self) -> str:
        return "intents"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class _Writes:
    """Stands in for the receipts and dead-letter producers: keeps what was written."""

    def __init__(self) -> None:
        self.receipts: list[Receipt] = []
        self.letters: list[tuple[int, Rejection]] = []

    async def send(self, item: Any, rejection: Rejection | None = None) -> None:
        if rejection is None:
            self.receipts.append(item)
        else:
            self.letters.append((item.offset(), rejection))


def _reconciler(writes: _Writes, now_ms: list[int]) -> Reconciler:
    client = cast(ApiClient, SimpleNamespace())
    client = cast(ApiClient, SimpleNamespace(tokens=StaticToken(Secret(TOKEN))))
    backoff, rng, log = Backoff(), random.Random(), logging.getLogger("tests.reconcile")
    return Reconciler(
        consumer_config={},
        admin_config={},
        topic="intents.receipts",
        group_id="g.reconcile",
        client=client,
        tokens=StaticToken(Secret(TOKEN)),
        receipts=cast(Receipts, writes),
        dlq=cast(DeadLetterProducer, writes),
        receipt_writes=AckedWriter(
            ReceiptError, what="receipt writes", backoff=backoff, rng=rng, log=log
        ),
        dlq_writes=AckedWriter(
            DeadLetterError, what="dead-letter writes", backoff=backoff, rng=rng, log=log
        ),
        delay_s=1.0,
        give_up_s=10.0,
        requests_per_minute=30,
        backoff=backoff,
        counts=Counts(),
        loop=asyncio.get_running_loop(),
        wall_ms=lambda: now_ms[0],
    )


async def test_final_records_are_reported_and_pending_ones_written_back() -> None:
    writes, now_ms = _Writes(), [5_000]
    reconciler = _reconciler(writes, now_ms)
    sources = [_Source(7, "919800000001"), _Source(8, "919900000002"), _Source(9, "919600000003")]

    def entry(receiver: str, info: Info) -> RecordStatus:
        return RecordStatus(
            caller_number="918040001000",
            receiver_number=receiver,
            label_id=LABEL,
            starts_at=0,
            status_info=info,
        )

    statuses = [
        entry("919800000001", Info("success")),
        entry("919900000002", Info("failed", REASONS["not_truecaller_user"])),
        entry("919600000003", Info("pending")),
    ]
    receipt = Receipt(
        account=ACCOUNT,
        records=3,
        status=200,
        batch_id=BATCH,
        sent_at_ms=0,
        sources=offset_ranges(("intents", 0, o) for o in (7, 8, 9)),
    )
    answer = StatusAnswer(200, BatchStatus(data=statuses))

    verdicts = reconciler._verdicts(receipt, answer, sources)  # type: ignore[arg-type]
    await reconciler._report(receipt, verdicts)

    assert [(o, r.code, r.stage) for o, r in writes.letters] == [
        (8, "not_truecaller_user", "status")
    ]
    outcome, recheck = writes.receipts
    assert outcome.kind == "outcome"
    assert [(o.offset, o.status, o.code) for o in outcome.outcomes] == [
        (7, "delivered", None),
        (8, "failed", "not_truecaller_user"),
    ]
    assert (outcome.batch_id, outcome.records) == (BATCH, 2)
    assert (recheck.kind, recheck.records, recheck.attempt) == ("recheck", 1, 1)
    assert recheck.sources == offset_ranges([("intents", 0, 9)])
    assert recheck.check_at_ms == 5_000 + 2 * 1_000  # the delay, doubled per look
    assert reconciler.counts.reconciled == {
        ("delivered", ""): 1,
        ("failed", "not_truecaller_user"): 1,
    }

    now_ms[0] = 10_000  # the give-up time
    writes.receipts.clear()
    verdicts = reconciler._verdicts(recheck, answer, sources[2:])  # type: ignore[arg-type]
    await reconciler._report(recheck, verdicts)

    assert writes.letters[-1][0] == 9
    assert writes.letters[-1][1].code == "unknown_status"
    [final] = writes.receipts
    assert [(o.offset, o.code) for o in final.outcomes] == [(9, "unknown_status")]


# -- a receipt that fails ------------------------------------------------------------------------


class _Reader:
    """Stands in for the originals reader: reads ``sources``, or raises while ``broken``."""

    def __init__(self, sources: list[_Source]) -> None:
        self.sources = sources
        self.broken = False

    async def read(self, positions: Any) -> list[_Source]:
        if self.broken:
            raise RuntimeError("the reader broke")
        wanted = {offset for _, _, offset in positions}
        return [s for s in self.sources if s.offset() in wanted]


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff's waits, recorded instead of slept."""
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr("stream.reconcile.asyncio.sleep", sleep)
    return waits


def _failing(
    writes: _Writes, failures: int
) -> tuple[Reconciler, _Reader, list[int], Receipt, Ticket]:
    """A reconciler whose look at a batch raises ``failures`` times (the status answer cannot be
    matched), then succeeds; with a receipt of offsets 7 and 8, taken from its receipts topic."""
    reconciler = _reconciler(writes, [5_000])
    reader = _Reader([_Source(7, "919800000001"), _Source(8, "919900000002")])
    reconciler._reader = cast(Any, reader)
    looks: list[int] = []
    verdicts = reconciler._verdicts

    async def fetch(receipt: Receipt) -> StatusAnswer:
        return StatusAnswer(200, BatchStatus(data=[]))

    def failing_verdicts(*args: Any) -> Any:
        looks.append(len(looks) + 1)
        if len(looks) <= failures:
            raise ValueError("a status this code did not foresee")
        return verdicts(*args)

    reconciler._fetch = fetch  # type: ignore[method-assign]
    reconciler._verdicts = failing_verdicts  # type: ignore[method-assign,assignment]
    receipt = Receipt(
        account=ACCOUNT,
        records=2,
        status=200,
        batch_id=BATCH,
        sent_at_ms=0,
        sources=offset_ranges(("intents", 0, o) for o in (7, 8)),
    )
    reconciler._tracker.assign([("intents.receipts", 0)])
    ticket = reconciler._tracker.receive("intents.receipts", 0, 41)
    assert ticket is not None
    return reconciler, reader, looks, receipt, ticket


async def test_a_look_that_raises_is_retried_with_the_backoff(no_sleep: list[float]) -> None:
    writes = _Writes()
    reconciler, _, looks, receipt, ticket = _failing(writes, failures=2)

    await reconciler._reconcile(ticket, receipt)

    assert looks == [1, 2, 3]
    assert len(no_sleep) == 2  # one backoff wait before each retry
    assert [r.kind for r in writes.receipts] == ["recheck"]  # not listed yet: pending
    assert writes.letters == []
    assert reconciler.finished == 1
    assert reconciler._tracker.to_commit() == {("intents.receipts", 0): 42}


async def test_a_receipt_that_keeps_failing_is_reported_failed_and_finished(
    no_sleep: list[float],
) -> None:
    writes = _Writes()
    reconciler, _, looks, receipt, ticket = _failing(writes, failures=1_000)

    await reconciler._reconcile(ticket, receipt)

    assert len(looks) == 5
    assert len(no_sleep) == 4
    assert [(o, r.code, r.stage) for o, r in writes.letters] == [
        (7, "unknown_status", "status"),
        (8, "unknown_status", "status"),
    ]
    [outcome] = writes.receipts
    assert outcome.kind == "outcome"
    assert [(o.offset, o.status, o.code) for o in outcome.outcomes] == [
        (7, "failed", "unknown_status"),
        (8, "failed", "unknown_status"),
    ]
    assert "a status this code did not foresee" in (outcome.outcomes[0].message or "")
    assert reconciler.counts.reconciled == {("failed", "unknown_status"): 2}
    assert reconciler.finished == 1
    assert reconciler._tracker.to_commit() == {("intents.receipts", 0): 42}


async def test_a_receipt_whose_originals_cannot_be_read_still_finishes(
    no_sleep: list[float],
) -> None:
    writes = _Writes()
    reconciler, reader, _, receipt, ticket = _failing(writes, failures=0)
    reader.broken = True

    await reconciler._reconcile(ticket, receipt)

    # No dead letter without the original; the outcome names every source offset all the same.
    assert writes.letters == []
    [outcome] = writes.receipts
    assert [(o.offset, o.code) for o in outcome.outcomes] == [
        (7, "unknown_status"),
        (8, "unknown_status"),
    ]
    assert reconciler.finished == 1


async def test_a_receipt_that_cannot_be_reported_is_counted_and_finished(
    no_sleep: list[float],
) -> None:
    class _Unwritable(_Writes):
        async def send(self, item: Any, rejection: Rejection | None = None) -> None:
            raise RuntimeError("the producer broke")

    reconciler, _, _, receipt, ticket = _failing(_Unwritable(), failures=1_000)

    await reconciler._reconcile(ticket, receipt)

    assert reconciler.counts.reconciled == {("unreconciled", "error"): 2}
    assert reconciler.finished == 1
    assert reconciler._tracker.to_commit() == {("intents.receipts", 0): 42}


# -- the receipts in hand -------------------------------------------------------------------------


def _taken(partition: int, offset: int, sent_at_ms: int) -> Message:
    """A receipt as the reconciler's consumer hands it over."""
    receipt = Receipt(
        account=ACCOUNT,
        records=1,
        status=200,
        batch_id=BATCH,
        sent_at_ms=sent_at_ms,
        sources=offset_ranges([("intents", 0, offset)]),
    )
    value = msgspec.json.encode(receipt)
    return Message(topic="intents.receipts", partition=partition, offset=offset, value=value)


async def test_receipts_wait_for_their_time_under_one_timer_and_get_a_task_once_due() -> None:
    now_ms = [3_700_000]
    reconciler = _reconciler(_Writes(), now_ms)  # due 1 s after sent, given up after 10 s
    tps = [("intents.receipts", 0), ("intents.receipts", 1)]
    reconciler._tracker.assign(tps)
    times = [(0, 1, 3_640_000), (1, 2, 3_699_500), (0, 3, 3_699_200), (1, 4, 3_700_000)]

    reconciler._on_messages([_taken(p, o, t) for p, o, t in times])

    [overdue] = reconciler._tasks[tps[0]]
    waiting = reconciler._waiting
    assert sorted(due for due, *_ in waiting._heap) == [3_700_200, 3_700_500, 3_701_000]
    assert (waiting._timer is not None, waiting._timer_ms) == (True, 3_700_200)
    assert (reconciler.in_hand(), reconciler.lag_s()) == (4, 60.0)
    overdue.cancel()
    await asyncio.gather(overdue, return_exceptions=True)
    assert (reconciler.in_hand(), reconciler.lag_s()) == (3, 0.8)

    now_ms[0] = 3_700_500
    waiting._wake()  # as its timer would: only what is due is started

    started = [t for held in reconciler._tasks.values() for t in held]
    assert len(started) == 2
    assert [due for due, *_ in waiting._heap] == [3_701_000]
    assert (waiting._timer is not None, waiting._timer_ms) == (True, 3_701_000)
    reconciler._drop([tps[1]])  # the one started of partition 1, and the one waiting
    assert (reconciler.in_hand(), reconciler.lag_s()) == (1, 1.3)
    assert len(waiting) == 0
    assert reconciler.finished == 2
    await reconciler.close(1.0)
    await asyncio.gather(*started, return_exceptions=True)
    assert (reconciler.in_hand(), reconciler.lag_s()) == (0, 0.0)


def test_the_times_in_hand_stay_few_behind_an_old_receipt() -> None:
    """One receipt held for long (a batch asked about for an hour), thousands come and go behind
    it: the oldest is still read off the top, and what is kept stays within the receipts held."""
    held = Oldest()
    held.add(1)
    for sent_at_ms in range(2, 10_002):
        held.add(sent_at_ms)
        held.remove(sent_at_ms)

    assert (held.count, held.oldest()) == (1, 1)
    assert len(held._heap) <= 2 * 1 + 64
    held.remove(1)
    assert (held.count, held.oldest()) == (0, None)


async def test_the_reconcilers_consumer_thread_that_failed_is_dead() -> None:
    reconciler = _reconciler(_Writes(), [0])
    consumer = ConsumerThread(
        {"bootstrap.servers": "127.0.0.1:1", "group.id": "g.reconcile"},
        ["t"],
        loop=asyncio.get_running_loop(),
        on_messages=reconciler._on_messages,
        on_assign=lambda tps: None,
        on_revoke=reconciler._on_revoke,
        on_lost=reconciler._on_lost,
        finished=lambda: 0,
        max_buffered=10,
    )

    def failing() -> list[Any]:
        raise KafkaException(KafkaError(KafkaError._FATAL))

    consumer._poll = failing  # type: ignore[method-assign]
    reconciler._consumer = consumer
    assert reconciler.threads() == {"reconcile consumer": True, "originals reader": True}
    consumer.start()
    await wait_until_async(consumer.done.done, timeout_s=10, what="the consumer thread to end")
    assert reconciler.threads() == {"reconcile consumer": False, "originals reader": True}
