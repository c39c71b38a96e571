"""Scenario 5: the dead-letter topic refuses writes for a while (a ``max.message.bytes`` too small
for any dead letter, a config a real broker enforces; raised again with an incremental config
change). No offset past a partition's first rejected record may be committed meanwhile
(docs/design.md#at-least-once), the failure must be logged clearly, and everything must be delivered
once the DLQ is back. Too small even for a dead letter cut to fit (docs/dlq.md#too-large), the
topic blocks those partitions loudly: ``dcr_dlq_blocked_records`` and ``/readyz`` name it."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from tests.support.kafka import create_topic
from tests.support.scenario import DEADLINE_S, SOAK, ScenarioFactory, sized
from tests.support.service import get_text, total
from tests.support.verifier import conclude, verify, wait_complete
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

EVENTS = sized(10_000, 100_000)
PARTITIONS = 4
HOLD_S = 30.0 if SOAK else 8.0
"""How long the DLQ stays unwritable once the commits reached the first rejected records."""
TOO_SMALL = "200"
"""Bytes: less than any dead letter (the original plus the ``dcr.*`` headers)."""


def set_max_message_bytes(admin: AdminClient, topic: str, value: str) -> None:
    entry = ConfigEntry("max.message.bytes", value, incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def test_an_unwritable_dlq_holds_the_commits_back(scenario: ScenarioFactory) -> None:
    started = time.monotonic()
    run = scenario(PARTITIONS)
    sandbox, ledger, topic = run.sandbox, run.ledger, run.topic
    dlq = f"{topic}.dlq"
    admin = AdminClient({"bootstrap.servers": run.kafka.bootstrap_servers})
    create_topic(run.kafka.bootstrap_servers, 1, name=dlq, config={"max.message.bytes": TOO_SMALL})
    # Every 25th invalid: round-robin puts partition p's first one at offset 6 (p + 1).
    run.produce(EVENTS, invalid_every=25)
    first_invalid = ledger.first_invalid()
    assert sorted(first_invalid) == list(range(PARTITIONS))
    blocked = [first_invalid[p] for p in range(PARTITIONS)]

    service = run.service()
    samples = 0
    with run.offsets() as offsets:
        # The commits reach each partition's first rejected record, and stop there.
        wait_until(
            lambda: offsets.committed() == blocked,
            timeout_s=120,
            what=f"commits to reach {blocked}",
        )
        held_from = time.monotonic()
        while time.monotonic() - held_from < HOLD_S:
            committed = offsets.committed()
            assert all(c <= b for c, b in zip(committed, blocked, strict=True)), (
                f"committed {committed} past the first rejected records {blocked}"
            )
            samples += 1
            time.sleep(0.5)
        assert service.proc.poll() is None, "the service died while the DLQ was unwritable"
        delivered_meanwhile = len(sandbox.accepted_receivers())
        blocked_records = total(service.metrics(), "dcr_dlq_blocked_records")
        assert blocked_records >= PARTITIONS, f"dcr_dlq_blocked_records is {blocked_records}"
        readyz = get_text(service.http_port(), "/readyz")
        assert f"dead letters cannot be written to {dlq}" in readyz, readyz
        assert "Message size too large" in readyz, readyz
    errors = [
        e["message"]
        for e in service.lines()
        if e["level"] == "error" and e["message"].startswith(f"dead-letter write for {topic}[")
    ]
    assert errors, "no error was logged for the failing dead-letter writes"
    assert "Message size too large" in errors[0], errors[0]

    set_max_message_bytes(admin, dlq, "1048588")
    wait_complete(ledger, sandbox, run.group, DEADLINE_S)
    assert total(service.metrics(), "dcr_dlq_blocked_records") == 0
    assert get_text(service.http_port(), "/readyz") == '{"status": "ready"}'
    report = verify(
        scenario="5. DLQ unwritable",
        ledger=ledger,
        sandbox=sandbox,
        group=run.group,
        started=started,
        notes={
            "held_s": HOLD_S,
            "commit_samples_while_held": samples,
            "held_at": blocked,
            "valid_delivered_while_held": delivered_meanwhile,
            "dlq_blocked_records_while_held": blocked_records,
            "readyz_while_held": readyz,
            "dlq_errors_logged": len(errors),
            "first_error": errors[0],
        },
    )
    conclude(report, service)
