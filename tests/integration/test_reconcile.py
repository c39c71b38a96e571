"""Reconciliation (issue 17): after the 200, every record's batch status, against the real broker
and the sandbox's status endpoint (docs/design.md#reconciliation)."""

from __future__ import annotations

import signal
import time

import pytest

from stream.dlq import ERROR_CODE, ERROR_MESSAGE, SOURCE_TOPIC
from stream.sandbox import StatusRules
from tests.support.events import Ledger
from tests.support.kafka import header_texts
from tests.support.scenario import ScenarioFactory
from tests.support.service import RUN_TIMEOUT_S, Service, total
from tests.support.statuses import NOT_USER_PREFIX, Outcomes, not_user_events, topic_size
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

DELAY_S = 2.0
PARTITIONS = 3
RECONCILING = {
    "api_version": "v2",
    "status_delay_s": str(DELAY_S),
    # One static token here: the status budget must not be what the test waits for.
    "status_requests_per_minute": "6000",
}
NOT_USERS = StatusRules(failures=((f"+{NOT_USER_PREFIX}", "not_truecaller_user"),))


def test_not_users_are_dead_lettered_and_the_rest_reported_delivered(
    scenario: ScenarioFactory,
) -> None:
    run = scenario(PARTITIONS, statuses=NOT_USERS)
    sandbox, ledger, servers = run.sandbox, run.ledger, run.kafka.bootstrap_servers
    ledger.produce(not_user_events(10_000))
    not_users = {i for i in ledger.valid if i.startswith(NOT_USER_PREFIX)}
    assert len(not_users) == 300
    service = run.service(**RECONCILING)
    with run.offsets() as offsets:
        committed_at = wait_until(
            offsets.all_committed, timeout_s=RUN_TIMEOUT_S, what="the input's commits"
        )
    committed_wall_ms = time.time_ns() // 1_000_000 - int((time.monotonic() - committed_at) * 1e3)
    delivered_ms = {r.receiver: r.received_ms for r in sandbox.run(sandbox.sandbox.accepted)}
    assert set(delivered_ms) == ledger.valid
    # Input commits are not held back: all of them landed before the last batch was even due.
    assert committed_wall_ms < max(delivered_ms.values()) + DELAY_S * 1000
    wait_until(
        lambda: topic_size(servers, f"{run.topic}.dlq") >= len(not_users),
        timeout_s=RUN_TIMEOUT_S,
        what="the not-users' dead letters",
    )
    _wait_all_reconciled(service, ledger)
    found = Outcomes.read(servers, ledger, letters=len(not_users))
    assert set(found.letters) == not_users
    late = []
    for event_id, letters in found.letters.items():
        texts = header_texts(letters[0])
        assert texts[ERROR_CODE] == "not_truecaller_user"
        assert texts[ERROR_MESSAGE] == "Receiver is not a Truecaller user"
        assert texts[SOURCE_TOPIC] == run.topic
        assert letters[0].key() == event_id.encode()
        written_ms = letters[0].timestamp()[1]
        late.append(written_ms - delivered_ms[event_id])
    print(f"delivery → dead letter: {min(late)}..{max(late)} ms (bound {2 * DELAY_S * 1000:.0f})")
    assert max(late) <= 2 * DELAY_S * 1000
    assert set(found.status) == ledger.valid
    assert {found.status[i] for i in not_users} == {"not_truecaller_user"}
    assert {found.status[i] for i in ledger.valid - not_users} == {"delivered"}
    assert set(found.reported.values()) == {1}
    assert all(r["batch_id"] for r in found.receipts)
    samples = service.metrics()
    reconciled, lettered = "dcr_records_reconciled_total", "dcr_records_dead_lettered_total"
    assert samples[f'{reconciled}{{code="",status="delivered"}}'] == 9_700
    assert samples[f'{reconciled}{{code="not_truecaller_user",status="failed"}}'] == 300
    assert samples[f'{lettered}{{code="not_truecaller_user",stage="status"}}'] == 300
    assert total(samples, "dcr_status_requests_total") >= len(found.receipts)


def test_pending_statuses_are_reported_once_when_final(scenario: ScenarioFactory) -> None:
    # Every record is pending for its first two looks (1 s, then 2 s later), final at the third.
    statuses = StatusRules(failures=NOT_USERS.failures, pending_s=4 * DELAY_S / 2)
    run = scenario(PARTITIONS, statuses=statuses)
    ledger = run.ledger
    ledger.produce(not_user_events(2_000))
    not_users = {i for i in ledger.valid if i.startswith(NOT_USER_PREFIX)}
    service = run.service(**{**RECONCILING, "status_delay_s": "1"})
    _wait_all_reconciled(service, ledger)
    samples = service.metrics()
    assert total(samples, "dcr_status_rechecks_total") >= len(ledger.valid)
    found = Outcomes.read(run.kafka.bootstrap_servers, ledger, letters=len(not_users))
    assert set(found.reported.values()) == {1}, "an outcome reported twice"
    assert set(found.status) == ledger.valid
    assert {found.status[i] for i in not_users} == {"not_truecaller_user"}
    assert {found.status[i] for i in ledger.valid - not_users} == {"delivered"}
    assert {i: len(letters) for i, letters in found.letters.items()} == dict.fromkeys(not_users, 1)
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0


def test_v1_batch_ids_come_from_the_message_text(scenario: ScenarioFactory) -> None:
    run = scenario(1, statuses=NOT_USERS)
    ledger = run.ledger
    ledger.produce(not_user_events(1_000))
    not_users = {i for i in ledger.valid if i.startswith(NOT_USER_PREFIX)}
    settings = {**RECONCILING, "api_version": "v1", "reconcile": "on", "status_delay_s": "1"}
    service = run.service(**settings)
    _wait_all_reconciled(service, ledger)
    found = Outcomes.read(run.kafka.bootstrap_servers, ledger, letters=len(not_users))
    assert set(found.letters) == not_users
    assert {found.status[i] for i in ledger.valid - not_users} == {"delivered"}
    assert all(r["batch_id"] for r in found.receipts)


def test_a_status_pending_past_the_give_up_time_is_unknown_status(
    scenario: ScenarioFactory,
) -> None:
    run = scenario(1, statuses=StatusRules(pending_s=3600, pending_prefix="9198000001"))
    ledger, servers = run.ledger, run.kafka.bootstrap_servers
    ledger.produce(not_user_events(300, failing=0))
    stuck = {i for i in ledger.valid if i.startswith("9198000001")}
    assert len(stuck) == 100
    run.service(**{**RECONCILING, "status_delay_s": "1", "status_give_up_s": "4"})
    wait_until(
        lambda: topic_size(servers, f"{run.topic}.dlq") >= len(stuck),
        timeout_s=RUN_TIMEOUT_S,
        what="the stuck records' dead letters",
    )
    found = Outcomes.read(servers, ledger, letters=len(stuck))
    assert set(found.letters) == stuck
    assert {header_texts(m[0])[ERROR_CODE] for m in found.letters.values()} == {"unknown_status"}
    wait_until(
        lambda: len(Outcomes.read(servers, ledger, letters=len(stuck)).status) == len(ledger.valid),
        timeout_s=RUN_TIMEOUT_S,
        what="every outcome",
    )


def _wait_all_reconciled(service: Service, ledger: Ledger) -> None:
    wait_until(
        lambda: total(service.metrics(), "dcr_records_reconciled_total") >= len(ledger.valid),
        timeout_s=RUN_TIMEOUT_S,
        what="every record reconciled",
    )
