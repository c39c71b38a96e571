"""Scenario 7: hostile messages interleaved with valid ones: random bytes, invalid UTF-8, deep
nesting, huge strings, numbers out of range, duplicate keys, wrong types, top-level arrays and
scalars, nulls and tombstones, malformed JSON, oversize values (``tests.faults.hostile``). Every one
must be dead-lettered with the code the validator gives it, the valid ones delivered, no partition
stalled and the process never die or log a traceback (docs/events.md: rejected, never a crash)."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.faults.hostile import hostile
from tests.support.events import Event, valid
from tests.support.scenario import DEADLINE_S, ScenarioFactory, sized
from tests.support.verifier import conclude, verify, wait_complete

pytestmark = [pytest.mark.faults, pytest.mark.integration]

HOSTILE = sized(10_000, 100_000)
VALID = HOSTILE
PARTITIONS = 6


def test_hostile_messages_are_dead_lettered_and_nothing_stalls(scenario: ScenarioFactory) -> None:
    started = time.monotonic()
    run = scenario(PARTITIONS)
    sandbox, ledger = run.sandbox, run.ledger
    rng = random.Random(7)
    now_ms = int(time.time() * 1000)
    kinds: Counter[str] = Counter()

    def interleaved() -> Iterator[Event]:
        left_valid, left_hostile = VALID, HOSTILE
        while left_valid or left_hostile:
            if rng.random() * (left_valid + left_hostile) < left_hostile:
                kind, event = hostile(left_hostile, now_ms, rng)
                kinds[kind] += 1
                left_hostile -= 1
            else:
                event = valid(left_valid, now_ms)
                left_valid -= 1
            yield event

    ledger.produce(interleaved())
    assert len(ledger.invalid) == HOSTILE
    service = run.service()
    wait_complete(ledger, sandbox, run.group, DEADLINE_S)
    assert service.proc.poll() is None, "the service died"
    tracebacks = [e for e in service.lines() if "exception" in e]
    report = verify(
        scenario="7. hostile messages",
        ledger=ledger,
        sandbox=sandbox,
        group=run.group,
        started=started,
        notes={
            "kinds": dict(kinds.most_common()),
            "codes": dict(Counter(ledger.invalid.values()).most_common()),
        },
    )
    conclude(report, service)
    assert not tracebacks, tracebacks[:3]
