"""Reconciliation survives ``kill -9`` (issue 17): the service killed while it reports batch
statuses, then restarted; no record's final status is missing (docs/design.md#reconciliation)."""

from __future__ import annotations

import signal

import pytest

from stream.dlq import ERROR_CODE
from stream.sandbox import StatusRules
from tests.support.kafka import header_texts
from tests.support.scenario import DEADLINE_S, FAST_SESSION, ScenarioFactory
from tests.support.statuses import NOT_USER_PREFIX, Outcomes, not_user_events, topic_size
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

PARTITIONS = 3


def test_kill_9_during_reconciliation_loses_no_final_status(scenario: ScenarioFactory) -> None:
    run = scenario(
        PARTITIONS, statuses=StatusRules(failures=((NOT_USER_PREFIX, "not_truecaller_user"),))
    )
    ledger, servers = run.ledger, run.kafka.bootstrap_servers
    dlq, receipts = f"{run.topic}.dlq", f"{run.topic}.receipts"
    run.sandbox.set_faults(latency_ms=50)
    ledger.produce(not_user_events(10_000))
    not_users = {i for i in ledger.valid if i.startswith(NOT_USER_PREFIX)}
    settings = {
        "api_version": "v2",
        "status_delay_s": "2",
        "status_requests_per_minute": "6000",
        # About four batches a second: reconciliation is spread over seconds, and the kill lands
        # in the middle of it.
        "rate_limit_rps": "4",
        "kafka_config": FAST_SESSION,
    }
    service = run.service(**settings)
    wait_until(
        lambda: topic_size(servers, dlq) >= 30,
        timeout_s=DEADLINE_S,
        what="reconciliation under way",
    )
    service.signal(signal.SIGKILL)
    service.wait(10)
    at_kill = topic_size(servers, dlq)
    assert at_kill < len(not_users), "reconciliation was over before the kill"
    run.service(**settings)

    def complete() -> bool:
        if topic_size(servers, dlq) < len(not_users):
            return False
        found = Outcomes.read(servers, ledger, receipts=receipts, dlq=dlq, letters=len(not_users))
        return set(found.status) == ledger.valid and set(found.letters) == not_users

    wait_until(complete, timeout_s=DEADLINE_S, interval_s=2, what="every final status")
    found = Outcomes.read(servers, ledger, receipts=receipts, dlq=dlq, letters=len(not_users))
    assert {found.status[i] for i in not_users} == {"not_truecaller_user"}
    assert {found.status[i] for i in ledger.valid - not_users} == {"delivered"}
    codes = {header_texts(m)[ERROR_CODE] for letters in found.letters.values() for m in letters}
    assert codes == {"not_truecaller_user"}
    twice = sum(1 for n in found.reported.values() if n > 1)
    print(f"dead letters at the kill: {at_kill}; outcomes reported more than once: {twice}")
