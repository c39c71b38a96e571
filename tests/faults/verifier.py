"""The zero-loss verifier: what was produced, against what the API accepted, the DLQ holds and the
group committed.

A :class:`Ledger` produces events (``tests.faults.events``) round-robin over a topic's partitions
and remembers each one's id, partition, offset and expected fate. At the end, :func:`verify` reads

* the sandbox's record of accepted records (valid events are named by their receiver number),
* the whole dead-letter topic (each dead letter names its original by the ``fault.id`` header the
  DLQ keeps), and
* the group's committed offsets and the topic's end offsets,

and proves: every valid event was accepted at least once; every invalid one is in the DLQ with the
code the validator gives it and the source partition and offset it was produced at; nothing else
was accepted or dead-lettered; committed == end on every partition. Duplicates (accepted more than
once, dead-lettered more than once) are at-least-once's price, not failures: they are counted and
reported. The :class:`Report` is printed by each test and again in the terminal summary
(``tests/faults/conftest.py``), so the figures can be quoted.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from tests.conftest import unique
from tests.faults.events import Event
from tests.integration.conftest import SandboxThread

__all__ = [
    "EXPECT_HEADER",
    "ID_HEADER",
    "REPORTS",
    "DeadLetters",
    "Ledger",
    "Offsets",
    "Report",
    "accepted_count",
    "api_stats",
    "read_dead_letters",
    "verify",
    "wait_complete",
    "wait_until",
]

ID_HEADER = "fault.id"
EXPECT_HEADER = "expect"

REPORTS: list[Report] = []
"""Every report of this session, for the terminal summary."""

_MISSING_SHOWN = 10
"""How many ids of each kind of problem a report names (the counts are always complete)."""


def wait_until(
    condition: Callable[[], bool], deadline_s: float, what: str, every_s: float = 0.25
) -> float:
    """Poll ``condition`` until it holds; return the seconds it took. Fails at the deadline."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > deadline_s:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(every_s)
    return time.monotonic() - started


@dataclass
class Ledger:
    """Produces events and keeps the proof obligations: who must be accepted, who dead-lettered."""

    bootstrap_servers: str
    topic: str
    partitions: int
    valid: set[str] = field(default_factory=set)
    invalid: dict[str, str] = field(default_factory=dict)
    """id → the code its dead letter must carry."""
    where: dict[str, tuple[int, int]] = field(default_factory=dict)
    """id → (partition, offset)."""
    produced: int = 0

    def produce(self, events: Iterable[Event]) -> None:
        """Produce round-robin over the partitions (so each partition's order is known) and wait
        until Kafka acknowledged every one."""
        producer = Producer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "enable.idempotence": True,
            }
        )
        failures: list[str] = []

        def delivered(event_id: str) -> Callable[[Any, Any], None]:
            # A delivery report carries no headers: the id comes with the callback.
            def report(error: Any, message: Any) -> None:
                if error is not None:
                    failures.append(str(error))
                else:
                    self.where[event_id] = (message.partition(), message.offset())

            return report

        for event in events:
            headers = [(ID_HEADER, event.id.encode())]
            if event.expect is None:
                assert event.id not in self.valid, f"duplicate id {event.id}"
                self.valid.add(event.id)
            else:
                assert event.id not in self.invalid, f"duplicate id {event.id}"
                self.invalid[event.id] = event.expect
                headers.append((EXPECT_HEADER, event.expect.encode()))
            partition = self.produced % self.partitions
            self.produced += 1
            while True:
                try:
                    producer.produce(
                        self.topic,
                        key=event.key,
                        value=event.value,
                        partition=partition,
                        headers=headers,
                        on_delivery=delivered(event.id),
                    )
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        assert producer.flush(120) == 0, "the test's producer could not deliver"
        assert not failures, failures[:5]

    def first_invalid(self) -> dict[int, int]:
        """Per partition, the offset of its first invalid event."""
        first: dict[int, int] = {}
        for event_id in self.invalid:
            partition, offset = self.where[event_id]
            first[partition] = min(offset, first.get(partition, offset))
        return first


class Offsets:
    """Reads a group's committed offsets and a topic's end offsets (never joins the group)."""

    def __init__(self, bootstrap_servers: str, group: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group})
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]

    def committed(self, timeout_s: float = 30) -> list[int]:
        """Per partition; negative when nothing is committed. Retries while the coordinator moves
        or loads (a fresh broker, a restarted one)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return [tp.offset for tp in self._consumer.committed(self._tps, timeout=10)]
            except KafkaException:  # NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS, …
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def ends(self, timeout_s: float = 10) -> list[int]:
        return [self._consumer.get_watermark_offsets(tp, timeout=timeout_s)[1] for tp in self._tps]

    def all_committed(self) -> bool:
        try:
            return self.committed() == self.ends()
        except KafkaException:  # the broker is away: not yet
            return False

    def close(self) -> None:
        self._consumer.close()


@dataclass
class DeadLetters:
    codes: dict[str, list[str]] = field(default_factory=dict)
    """id → the ``dcr.error.code`` of each of its dead letters."""
    sources: dict[str, set[tuple[int, int]]] = field(default_factory=dict)
    """id → the (``dcr.source.partition``, ``dcr.source.offset``) its dead letters name."""
    headers: list[dict[str, bytes]] = field(default_factory=list)
    nameless: int = 0
    """Dead letters without an id header (they cannot be ours)."""


def read_dead_letters(bootstrap_servers: str, topic: str, timeout_s: float = 60) -> DeadLetters:
    """The whole dead-letter topic, from the beginning to its end offsets as of now."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": unique("dlq-verifier"),
            "enable.auto.commit": False,
        }
    )
    letters = DeadLetters()
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        if metadata.error is not None:  # never created: nothing was dead-lettered
            return letters
        remaining = {}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), 30)
            if high > low:
                remaining[partition] = high
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in remaining])
        deadline = time.monotonic() + timeout_s
        while remaining:
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for message in consumer.consume(1000, 0.5):
                if message.error() is not None:
                    continue
                partition = message.partition()
                if message.offset() + 1 >= remaining.get(partition, 0):
                    remaining.pop(partition, None)
                headers = {k: v or b"" for k, v in message.headers() or []}
                letters.headers.append(headers)
                event_id = headers.get(ID_HEADER)
                if event_id is None:
                    letters.nameless += 1
                    continue
                code = headers.get("dcr.error.code", b"").decode()
                letters.codes.setdefault(event_id.decode(), []).append(code)
                source = (
                    int(headers.get("dcr.source.partition", b"-1") or -1),
                    int(headers.get("dcr.source.offset", b"-1") or -1),
                )
                letters.sources.setdefault(event_id.decode(), set()).add(source)
    finally:
        consumer.close()
    return letters


@dataclass
class Report:
    """What a scenario proved, with the figures to quote."""

    scenario: str
    produced: int
    valid: int
    invalid: int
    delivered: int
    """Distinct valid events the API accepted."""
    accepted: int
    """Records the API accepted, duplicates included."""
    dead_lettered: int
    """Distinct invalid events in the DLQ with the right code."""
    duplicates: int
    """Accepted records beyond the first of their event."""
    dlq_records: int
    dlq_duplicates: int
    """Dead letters beyond the first of their original."""
    wall_s: float
    missing: list[str] = field(default_factory=list)
    """Valid events the API never accepted."""
    missing_dlq: list[str] = field(default_factory=list)
    """Invalid events absent from the DLQ."""
    wrong_code: list[str] = field(default_factory=list)
    """Dead letters whose ``dcr.error.code`` or ``dcr.source.*`` headers do not fit the original."""
    unexpected: list[str] = field(default_factory=list)
    """Accepted records or dead letters that match nothing that should be there."""
    uncommitted: dict[int, tuple[int, int]] = field(default_factory=dict)
    """partition → (committed, end) where they differ."""
    notes: dict[str, object] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = []
        for name, items in (
            ("valid events never accepted", self.missing),
            ("invalid events not in the DLQ", self.missing_dlq),
            ("dead letters with a wrong code or source", self.wrong_code),
            ("unexpected records", self.unexpected),
        ):
            if items:
                found.append(f"{len(items)} {name}: {items[:_MISSING_SHOWN]}")
        if self.uncommitted:
            found.append(
                f"committed != end offsets (partition: committed, end): {self.uncommitted}"
            )
        return found

    def check(self) -> None:
        problems = self.problems()
        assert not problems, f"{self.scenario}: " + "; ".join(problems)

    def line(self) -> str:
        return (
            f"{self.scenario}: produced {self.produced} ({self.valid} valid, {self.invalid} "
            f"invalid); delivered {self.delivered}, dead-lettered {self.dead_lettered}; "
            f"duplicates {self.duplicates} accepted, {self.dlq_duplicates} in the DLQ; "
            f"wall {self.wall_s:.1f} s; {'OK' if not self.problems() else 'FAILED'}"
        )

    def show(self) -> None:
        """Print it (``pytest -s``) and keep it for the terminal summary."""
        REPORTS.append(self)
        print(f"\n[faults] {self.line()}")
        if self.notes:
            print(f"[faults]   notes: {json.dumps(self.notes, default=str)}")


def verify(
    *,
    scenario: str,
    ledger: Ledger,
    sandbox: SandboxThread,
    group: str,
    dlq_topic: str,
    started: float,
    notes: dict[str, object] | None = None,
) -> Report:
    """Compare what the ledger produced with the API's, the DLQ's and the group's record.

    ``started`` is the ``time.monotonic()`` of the scenario's start; the wall time runs from there
    to now, so call this once the run is over (and before any slow teardown).
    """
    wall_s = time.monotonic() - started
    accepted = Counter(record.receiver for record in sandbox.run(sandbox.sandbox.accepted))
    letters = read_dead_letters(ledger.bootstrap_servers, dlq_topic)
    offsets = Offsets(ledger.bootstrap_servers, group, ledger.topic, ledger.partitions)
    try:
        committed, ends = offsets.committed(30), offsets.ends(30)
    finally:
        offsets.close()
    report = Report(
        scenario=scenario,
        produced=ledger.produced,
        valid=len(ledger.valid),
        invalid=len(ledger.invalid),
        delivered=sum(1 for r in accepted if r in ledger.valid),
        accepted=sum(accepted.values()),
        duplicates=sum(count - 1 for count in accepted.values()),
        dead_lettered=0,
        dlq_records=sum(len(codes) for codes in letters.codes.values()) + letters.nameless,
        dlq_duplicates=sum(len(codes) - 1 for codes in letters.codes.values()),
        wall_s=wall_s,
        notes=dict(notes or {}),
    )
    report.missing = sorted(ledger.valid - accepted.keys())
    report.unexpected = [f"api:{r}" for r in sorted(accepted.keys() - ledger.valid)]
    for event_id, expected in ledger.invalid.items():
        codes = letters.codes.get(event_id)
        if not codes:
            report.missing_dlq.append(event_id)
        elif any(code != expected for code in codes):
            report.wrong_code.append(f"{event_id}: {codes} (expected {expected})")
        elif letters.sources[event_id] != {ledger.where[event_id]}:
            found = sorted(letters.sources[event_id])
            report.wrong_code.append(f"{event_id}: from {found}, not {ledger.where[event_id]}")
        else:
            report.dead_lettered += 1
    report.unexpected += [f"dlq:{i}" for i in sorted(letters.codes.keys() - ledger.invalid.keys())]
    report.unexpected += ["dlq:<no id>"] * letters.nameless
    report.uncommitted = {
        p: (c, e) for p, (c, e) in enumerate(zip(committed, ends, strict=True)) if c != e
    }
    return report


def accepted_count(sandbox: SandboxThread) -> int:
    """Records the sandbox accepted so far, duplicates included (cheap: a counter)."""
    return sandbox.run(lambda: sandbox.sandbox.stats().totals.records_accepted)


def wait_complete(
    ledger: Ledger, sandbox: SandboxThread, group: str, deadline_s: float, what: str = "the run"
) -> float:
    """Wait until every valid event was accepted and the group committed every partition to its
    end (which the service does only once the invalid ones are dead-lettered); return the seconds
    it took. The full proof is ``verify``'s; this only decides when to look."""
    offsets = Offsets(ledger.bootstrap_servers, group, ledger.topic, ledger.partitions)

    def done() -> bool:
        if accepted_count(sandbox) < len(ledger.valid):
            return False
        receivers = {r.receiver for r in sandbox.run(sandbox.sandbox.accepted)}
        return receivers >= ledger.valid and offsets.all_committed()

    try:
        return wait_until(done, deadline_s, f"{what} to complete", every_s=0.5)
    finally:
        offsets.close()


def api_stats(sandbox: SandboxThread) -> dict[str, object]:
    """The sandbox's request and token counters, for a report's notes."""
    totals = sandbox.run(sandbox.sandbox.stats).totals
    return {"api_requests": dict(sorted(totals.requests.items())), "tokens": totals.tokens}
