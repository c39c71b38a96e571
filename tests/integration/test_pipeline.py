"""``dcr-stream run`` end to end: a real broker, the sandbox, the service as a process (issue 5)."""

from __future__ import annotations

import signal
import time

import pytest
from confluent_kafka.admin import AdminClient

from tests.support.kafka import header_texts, read_topic
from tests.support.scenario import FAST_SESSION, TOKENS, ScenarioFactory
from tests.support.service import RUN_TIMEOUT_S
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 4


def test_every_event_is_delivered_or_dead_lettered_and_committed(scenario: ScenarioFactory) -> None:
    run = scenario(PARTITIONS)
    sandbox = run.sandbox
    run.produce(20_000, invalid_every=50)
    assert len(run.ledger.valid) == 19_600

    service = run.service()
    wait_until(run.delivered(), timeout_s=RUN_TIMEOUT_S, what="deliveries")
    run.wait_committed(timeout_s=RUN_TIMEOUT_S)
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0

    accepted = sandbox.accepted_receivers()
    assert set(accepted) == run.ledger.valid
    dead = read_topic(run.kafka.bootstrap_servers, f"{run.topic}.dlq", at_least=400)
    assert len(dead) == 400
    for message in dead:
        h = header_texts(message)
        assert h["dcr.error.code"] == h["expect"]
        assert h["dcr.source.topic"] == run.topic
    with run.offsets() as offsets:
        assert offsets.committed() == offsets.ends()
    print(f"duplicates accepted: {sum(accepted.values()) - len(accepted)}")


def test_nothing_is_committed_while_the_api_is_down(scenario: ScenarioFactory) -> None:
    run = scenario(PARTITIONS)
    sandbox = run.sandbox
    sandbox.set_faults(outage="503")
    run.produce(2_000)

    service = run.service()
    wait_until(
        lambda: sandbox.run(sandbox.sandbox.stats).totals.requests.get("503", 0) >= 20,
        timeout_s=RUN_TIMEOUT_S,
    )
    with run.offsets() as offsets:
        committed = offsets.committed()
    assert all(offset < 0 for offset in committed), committed  # no offset stored at all

    sandbox.set_faults(outage="off")
    wait_until(run.delivered(), timeout_s=RUN_TIMEOUT_S, what="deliveries")
    run.wait_committed(timeout_s=RUN_TIMEOUT_S)
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0


def test_kill_9_and_restart_loses_nothing(scenario: ScenarioFactory) -> None:
    run = scenario(PARTITIONS)
    sandbox = run.sandbox
    run.produce(20_000)
    # A slow API keeps the run busy long enough to be killed in the middle of it.
    sandbox.set_faults(latency_ms=50)

    first = run.service(rate_limit_rps="20")
    wait_until(
        lambda: len(sandbox.accepted_receivers()) >= 5_000,
        timeout_s=RUN_TIMEOUT_S,
        what="a part delivered",
    )
    first.signal(signal.SIGKILL)
    first.wait(10)
    before = len(sandbox.accepted_receivers())
    assert before < len(run.ledger.valid)

    second = run.service()
    wait_until(run.delivered(), timeout_s=RUN_TIMEOUT_S, what="deliveries")
    run.wait_committed(timeout_s=RUN_TIMEOUT_S)
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0
    accepted = sandbox.accepted_receivers()
    duplicates = sum(accepted.values()) - len(accepted)
    print(f"kill -9 after {before} accepted: duplicates {duplicates}")


def test_a_third_joins_and_one_leaves_without_loss(scenario: ScenarioFactory) -> None:
    run = scenario(6)
    sandbox = run.sandbox
    sandbox.set_faults(latency_ms=30)
    run.produce(30_000)
    slow = {"rate_limit_rps": "10"}

    one, two = (run.service(**slow) for _ in range(2))
    wait_until(
        lambda: len(sandbox.accepted_receivers()) >= 3_000,
        timeout_s=RUN_TIMEOUT_S,
        what="first deliveries",
    )
    three = run.service(**slow)
    wait_until(
        lambda: len(sandbox.accepted_receivers()) >= 10_000,
        timeout_s=RUN_TIMEOUT_S,
        what="more deliveries",
    )
    one.signal(signal.SIGTERM)
    assert one.wait(30) == 0
    wait_until(run.delivered(), timeout_s=RUN_TIMEOUT_S, what="deliveries")
    run.wait_committed(timeout_s=RUN_TIMEOUT_S)
    for service in (two, three):
        service.signal(signal.SIGTERM)
        assert service.wait(30) == 0

    logged = [e["message"] for s in (one, two, three) for e in s.lines()]
    assert any(e["message"].startswith("assigned") for e in three.lines())
    revocations = [m for m in logged if m.startswith("revoking")]
    assert len(revocations) >= 2, "the join and the leave each revoke partitions somewhere"
    accepted = sandbox.accepted_receivers()
    print(f"rebalances: duplicates {sum(accepted.values()) - len(accepted)}")


def test_a_replica_short_of_tokens_does_not_send_what_it_was_revoked(
    scenario: ScenarioFactory,
) -> None:
    """Two tokens (a batch a second each) and a backlog the first replica buffers far ahead of
    them: when a second replica joins, the first stops sending the partitions it gives up, and the
    second reads them again from the commit. Before, the first kept sending its buffered records of
    those partitions long after the revoke, and every one of them was delivered twice."""
    run = scenario(6, documented=True)
    sandbox = run.sandbox
    two = {"api_token": ",".join(TOKENS[:2]), "token_pool_size": "2", "kafka_config": FAST_SESSION}
    run.produce(20_000)
    first = run.service(**two)
    wait_until(lambda: sandbox.accepted_count() >= 2_000, timeout_s=RUN_TIMEOUT_S, what="a start")
    second = run.service(**two)
    wait_until(run.delivered(), timeout_s=RUN_TIMEOUT_S, what="deliveries")
    run.wait_committed(timeout_s=RUN_TIMEOUT_S)
    assert any(e["message"].startswith("revoking") for e in first.lines())
    assert any(e["message"].startswith("assigned") for e in second.lines())
    accepted = sandbox.accepted_receivers()
    twice = sum(accepted.values()) - len(accepted)
    print(f"a replica joins one short of tokens: {twice} records delivered twice")
    assert twice <= 1_000, "at most the two requests on their way at the revoke"


def test_backlog_with_the_api_down_stays_bounded_and_in_the_group(
    scenario: ScenarioFactory,
) -> None:
    run = scenario(PARTITIONS)
    sandbox = run.sandbox
    sandbox.set_faults(outage="503")
    run.produce(500_000)
    poll_interval_ms = 6_000
    service = run.service(
        kafka_config=f'{{"max.poll.interval.ms": {poll_interval_ms}, "session.timeout.ms": 6000}}',
    )
    admin = AdminClient({"bootstrap.servers": run.kafka.bootstrap_servers})
    peak = 0.0
    started = time.monotonic()
    while time.monotonic() - started < 2.5 * poll_interval_ms / 1000:
        peak = max(peak, service.rss_mib())
        time.sleep(0.2)
    description = admin.describe_consumer_groups([run.group])[run.group].result(30)
    assert len(description.members) == 1
    messages = [e["message"] for e in service.lines()]
    assert not [m for m in messages if m.startswith(("lost", "revoking"))], messages
    assert any(m.startswith("paused") for m in messages)
    print(f"peak RSS with the API down and 500,000 events waiting: {peak:.0f} MiB")
    assert peak < 250
    service.signal(signal.SIGTERM)
    service.wait(60)


def test_sigterm_drains_and_a_restart_sends_nothing_twice(scenario: ScenarioFactory) -> None:
    run = scenario(PARTITIONS)
    sandbox = run.sandbox
    run.produce(20_000)
    sandbox.set_faults(latency_ms=50)

    first = run.service(
        rate_limit_rps="20",
        shutdown_timeout_s="10",
        max_buffered_records="2000",  # so that SIGTERM finds most of the topic not yet read
    )
    wait_until(
        lambda: len(sandbox.accepted_receivers()) >= 5_000,
        timeout_s=RUN_TIMEOUT_S,
        what="a part delivered",
    )
    stopped_at = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(15) == 0
    assert time.monotonic() - stopped_at <= 10
    seen_by_first = set(sandbox.accepted_receivers())
    assert len(seen_by_first) < len(run.ledger.valid)

    sandbox.set_faults(latency_ms=0)
    second = run.service()
    wait_until(run.delivered(), timeout_s=RUN_TIMEOUT_S, what="deliveries")
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0
    accepted = sandbox.accepted_receivers()
    twice = {r for r in seen_by_first if accepted[r] > 1}
    assert twice == set(), f"{len(twice)} records accepted before SIGTERM were sent again"
