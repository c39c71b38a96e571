"""The zero-loss verifier: what was produced, against what the API accepted, the DLQ holds and the
group committed.

A ``Ledger`` (``tests.support.events``) produces events round-robin over a topic's partitions
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
(``tests/support/summary.py``), so the figures can be quoted.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

from tests.support.events import ID_HEADER, Ledger
from tests.support.kafka import Offsets, read_topic
from tests.support.kafka import headers as headers_of
from tests.support.sandbox import SandboxThread
from tests.support.scenario import SOAK
from tests.support.service import Service
from tests.support.summary import note
from tests.support.waiting import wait_until

__all__ = [
    "DeadLetters",
    "Report",
    "api_stats",
    "conclude",
    "read_dead_letters",
    "verify",
    "wait_complete",
]

_MISSING_SHOWN = 10
"""How many ids of each kind of problem a report names (the counts are always complete)."""


@dataclass
class DeadLetters:
    codes: dict[str, list[str]] = field(default_factory=dict)
    """id → the ``dcr.error.code`` of each of its dead letters."""
    sources: dict[str, set[tuple[int, int]]] = field(default_factory=dict)
    """id → the (``dcr.source.partition``, ``dcr.source.offset``) its dead letters name."""
    headers: list[dict[str, bytes]] = field(default_factory=list)
    nameless: int = 0
    """Dead letters without an id header (they cannot be ours)."""


def _bytes(value: str | bytes | None) -> bytes:
    return value.encode() if isinstance(value, str) else value or b""


def read_dead_letters(bootstrap_servers: str, topic: str) -> DeadLetters:
    """The whole dead-letter topic, from the beginning to its end offsets as of now."""
    letters = DeadLetters()
    for message in read_topic(bootstrap_servers, topic):
        headers = {
            k: v.encode() if isinstance(v, str) else v or b"" for k, v in headers_of(message)
        }
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
        section = f"fault injection ({'soak' if SOAK else 'bounded'} sizes)"
        note(section, self.line())
        for problem in self.problems():
            note(section, f"    {problem}")
        print(f"\n[faults] {self.line()}")
        if self.notes:
            print(f"[faults]   notes: {json.dumps(self.notes, default=str)}")


def verify(
    *,
    scenario: str,
    ledger: Ledger,
    sandbox: SandboxThread,
    group: str,
    started: float,
    dlq_topic: str | None = None,
    notes: dict[str, object] | None = None,
) -> Report:
    """Compare what the ledger produced with the API's, the DLQ's and the group's record.

    ``started`` is the ``time.monotonic()`` of the scenario's start; the wall time runs from there
    to now, so call this once the run is over (and before any slow teardown). ``dlq_topic`` is the
    service's default unless given: the ledger's topic and ``.dlq``. The report's notes get the
    API's counters (``api_stats``) after the scenario's own.
    """
    wall_s = time.monotonic() - started
    dlq_topic = dlq_topic or f"{ledger.topic}.dlq"
    accepted = Counter(record.receiver for record in sandbox.run(sandbox.sandbox.accepted))
    letters = read_dead_letters(ledger.bootstrap_servers, dlq_topic)
    with Offsets(ledger.bootstrap_servers, group, ledger.topic, ledger.partitions) as offsets:
        committed, ends = offsets.committed(30), offsets.ends(30)
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
        notes={**(notes or {}), **api_stats(sandbox)},
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


def wait_complete(
    ledger: Ledger, sandbox: SandboxThread, group: str, deadline_s: float, what: str = "the run"
) -> None:
    """Wait until every valid event was accepted and the group committed every partition to its
    end (which the service does only once the invalid ones are dead-lettered). The full proof is
    ``verify``'s; this only decides when to look."""

    def done() -> bool:
        if sandbox.accepted_count() < len(ledger.valid):
            return False
        receivers = {r.receiver for r in sandbox.run(sandbox.sandbox.accepted)}
        return receivers >= ledger.valid and offsets.all_committed()

    with Offsets(ledger.bootstrap_servers, group, ledger.topic, ledger.partitions) as offsets:
        wait_until(done, timeout_s=deadline_s, interval_s=0.5, what=f"{what} to complete")


def conclude(report: Report, *services: Service) -> None:
    """End a scenario: stop each service as an operator would (SIGTERM; it must exit 0), then
    show the report and fail the test on any problem it found."""
    for service in services:
        service.signal(signal.SIGTERM)
        assert service.wait(30) == 0, f"{service.log.name} exited with {service.proc.returncode}"
    report.show()
    report.check()


def api_stats(sandbox: SandboxThread) -> dict[str, object]:
    """The sandbox's request and token counters, for a report's notes."""
    totals = sandbox.run(sandbox.sandbox.stats).totals
    return {"api_requests": dict(sorted(totals.requests.items())), "tokens": totals.tokens}
