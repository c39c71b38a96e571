"""Records that could never finish: a value too large for its own dead letter
(docs/dlq.md#too-large, docs/design.md#bounded-progress). Three values of about 1,040,000 bytes
(random, so compression cannot save them) among 5,000 valid events: over the producer's
``message.max.bytes`` with our headers, so each is dead-lettered cut; everything else is
delivered, and every offset committed."""

from __future__ import annotations

import os
import signal
import time

import pytest

from stream.dlq import CUT_VALUE_BYTES
from tests.support.events import ID_HEADER, Event
from tests.support.kafka import header_texts, read_topic
from tests.support.scenario import ScenarioFactory
from tests.support.service import total
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 4
VALID = 5_000
HUGE_BYTES = 1_040_000
"""Under the broker's default ``max.message.bytes`` (1 MiB + 12), over the producer's default
``message.max.bytes`` (1,000,000) once the dead-letter headers are added: the dead letter whole
can never be written."""
COMMITTED_WITHIN_S = 60.0


def test_values_too_large_to_dead_letter_whole_are_cut_and_committed(
    scenario: ScenarioFactory,
) -> None:
    run = scenario(PARTITIONS)
    run.produce(VALID // 2)
    # One after the other, round-robin: each on a partition of its own.
    huge = {f"huge-{i}": os.urandom(HUGE_BYTES) for i in range(3)}
    run.ledger.produce(
        Event(name, value, "message_too_large", name.encode()) for name, value in huge.items()
    )
    run.produce(VALID - VALID // 2)
    assert len(run.ledger.valid) == VALID

    started = time.monotonic()
    service = run.service()
    run.wait_committed(timeout_s=COMMITTED_WITHIN_S)
    committed_s = time.monotonic() - started
    with run.offsets() as offsets:
        assert offsets.committed() == offsets.ends()
    wait_until(run.delivered(), timeout_s=10, what="deliveries")
    samples = service.metrics()
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0

    assert set(run.sandbox.accepted_receivers()) == run.ledger.valid
    letters = read_topic(run.kafka.bootstrap_servers, f"{run.topic}.dlq", at_least=len(huge))
    assert len(letters) == len(huge)
    for letter in letters:
        h = header_texts(letter)
        original = huge[h[ID_HEADER]]
        assert (h["dcr.error.code"], h["dcr.error.stage"]) == ("message_too_large", "decode")
        assert h["dcr.error.truncated"] == "value"
        assert h["dcr.original.size"] == str(HUGE_BYTES)
        assert (h["dcr.source.topic"], h["dcr.source.partition"], h["dcr.source.offset"]) == (
            run.topic,
            *map(str, run.ledger.where[h[ID_HEADER]]),
        )
        assert letter.value() == original[:CUT_VALUE_BYTES]
    assert total(samples, "dcr_dlq_truncated_total") == len(huge)
    assert total(samples, "dcr_dlq_blocked_records") == 0
    print(f"every offset committed {committed_s:.1f} s after the start")


STUCK_WARN_S = 2.0
"""Short here so that the test waits seconds; the default (180 s) is argued in
docs/design.md#bounded-progress."""


def test_a_stall_is_a_gauge_and_one_warning_per_partition(scenario: ScenarioFactory) -> None:
    run = scenario(PARTITIONS)
    topic = run.topic
    run.sandbox.set_faults(outage="503")
    run.produce(400)
    service = run.service(stuck_warn_s=str(STUCK_WARN_S))

    def stuck() -> list[str]:
        return [
            e["message"]
            for e in service.lines()
            if e["level"] == "warning" and e["message"].startswith(f"partition {topic}[")
        ]

    wait_until(lambda: len(stuck()) >= PARTITIONS, timeout_s=60, what="a warning per partition")
    ages = {
        name: value
        for name, value in service.metrics().items()
        if name.startswith("dcr_partition_oldest_unfinished_seconds{")
    }
    assert len(ages) == PARTITIONS, ages
    assert all(age > STUCK_WARN_S for age in ages.values()), ages
    time.sleep(3 * STUCK_WARN_S)  # the stall goes on: no more warnings
    warnings = stuck()
    assert len(warnings) == PARTITIONS, warnings
    for partition in range(PARTITIONS):
        assert any(
            w.startswith(f"partition {topic}[{partition}] is stuck: offset 0 has been unfinished")
            for w in warnings
        ), warnings

    run.sandbox.set_faults(outage="off")
    run.wait_committed(timeout_s=60)
    wait_until(
        lambda: total(service.metrics(), "dcr_partition_oldest_unfinished_seconds") == 0,
        timeout_s=10,
        what="no unfinished record left",
    )
    moved = [e for e in service.lines() if "its stall is over" in e["message"]]
    assert len(moved) == PARTITIONS, moved
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0
