"""The verifier itself: it must see every kind of loss and count duplicates. Here no service runs;
the test plays it, badly on purpose: some records sent twice, some never, a dead letter with the
wrong code, one twice, one missing, commits short of the end."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.support.events import ACCOUNTS, ID_HEADER, LABEL
from tests.support.sandbox import TOKEN, SandboxThread
from tests.support.scenario import ScenarioFactory
from tests.support.verifier import verify

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def post(sandbox: SandboxThread, receivers: list[str], now_ms: int) -> None:
    records = [
        {
            "caller": "918040001000",
            "receiver": receiver,
            "label_id": LABEL,
            "starts_at": now_ms,
            "ends_at": now_ms + 3_600_000,
        }
        for receiver in receivers
    ]
    request = urllib.request.Request(
        f"{sandbox.url}/clients/{ACCOUNTS[0]}/dynamic_call_records",
        data=json.dumps({"call_records": records}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_the_verifier_sees_loss_and_counts_duplicates(scenario: ScenarioFactory) -> None:
    started = time.monotonic()
    run = scenario(partitions=2)
    sandbox, ledger, servers = run.sandbox, run.ledger, run.kafka.bootstrap_servers
    dlq = f"{run.topic}.dlq"
    now_ms = int(time.time() * 1000)
    run.produce(20, now_ms=now_ms, invalid_every=5)  # 16 valid, 4 invalid
    valid, invalid = sorted(ledger.valid), sorted(ledger.invalid)

    post(sandbox, valid[:14], now_ms)  # two never sent
    post(sandbox, valid[:3], now_ms)  # three sent twice
    post(sandbox, ["919999999999"], now_ms)  # one nobody produced
    producer = Producer({"bootstrap.servers": servers})
    letters = [
        (invalid[0], ledger.invalid[invalid[0]], ledger.where[invalid[0]]),
        (invalid[0], ledger.invalid[invalid[0]], ledger.where[invalid[0]]),  # twice
        (invalid[1], "expired", ledger.where[invalid[1]]),  # the wrong code
        (invalid[2], ledger.invalid[invalid[2]], (9, 9)),  # the wrong source
    ]  # and invalid[3] never
    for event_id, code, (partition, offset) in letters:
        headers = {
            ID_HEADER: event_id,
            "dcr.error.code": code,
            "dcr.source.partition": str(partition),
            "dcr.source.offset": str(offset),
        }
        producer.produce(dlq, value=b"{}", headers=list(headers.items()))
    assert producer.flush(30) == 0
    committer = Consumer({"bootstrap.servers": servers, "group.id": run.group})
    committer.commit(offsets=[TopicPartition(run.topic, 0, 10)], asynchronous=False)  # the end
    committer.commit(offsets=[TopicPartition(run.topic, 1, 4)], asynchronous=False)  # short of it
    committer.close()

    report = verify(
        scenario="0. the verifier, fed a bad run",
        ledger=ledger,
        sandbox=sandbox,
        group=run.group,
        started=started,
        dlq_topic=dlq,
    )
    assert report.produced == 20
    assert (report.valid, report.invalid) == (16, 4)
    assert report.missing == valid[14:]
    assert (report.delivered, report.accepted, report.duplicates) == (14, 18, 3)
    assert report.unexpected == ["api:919999999999"]
    assert report.dead_lettered == 1
    assert report.dlq_duplicates == 1
    assert report.missing_dlq == [invalid[3]]
    assert sorted(w.split(":")[0] for w in report.wrong_code) == [invalid[1], invalid[2]]
    assert report.uncommitted == {1: (4, 10)}
    with pytest.raises(AssertionError, match="2 valid events never accepted"):
        report.check()
