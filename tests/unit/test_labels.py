"""The label gate (stream/labels.py) against a fake labels endpoint: registry, refresh on a miss,
coalescing, paging, probes while the registry cannot be read, and the override."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from stream.api import Label
from stream.batching import Pending
from stream.events import Record
from stream.labels import LabelGate, Probe, due

ACCOUNT = "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11"
OTHER_ACCOUNT = "7f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a12"
KNOWN = "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"
NEW = "1b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6b"
FOREIGN = "2b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6c"
DEADLINE_S = 5.0


def record(label: str, account: str = ACCOUNT, n: int = 0) -> Pending[int]:
    return Pending(
        Record(
            account=account,
            caller="918040001000",
            receiver=f"9198{n:08d}",
            label_id=label,
            label_name=None,
            call_reason=None,
            starts_at=0,
            ends_at=1,
            high_priority=False,
        ),
        n,
    )


@dataclass
class Endpoint:
    """A fake labels endpoint: per account, a list of labels; ``failing`` answers an error."""

    labels: dict[str, list[Label]] = field(default_factory=dict)
    failing: str | None = None
    calls: list[tuple[str, int]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    """When set, a call waits for it (to hold a refresh open)."""

    async def get_labels(self, account: str, *, page: int, limit: int) -> list[Label] | str:
        self.calls.append((account, page))
        listed = self.labels.get(account)  # what the API reads when the request arrives
        if self.gate is not None:
            await self.gate.wait()
        if self.failing is not None:
            return self.failing
        if listed is None:
            return "the labels endpoint answered 404"
        return listed[(page - 1) * limit : page * limit]

    def refreshes(self, account: str = ACCOUNT) -> int:
        return sum(1 for a, page in self.calls if a == account and page == 1)


@dataclass
class Outcomes:
    released: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    probed: list[int] = field(default_factory=list)
    answers: Iterator[Probe] = field(default_factory=lambda: iter(()))

    def release(self, items: list[Pending[int]]) -> None:
        self.released += [item.source for item in items]

    def refuse(self, item: Pending[int]) -> None:
        self.refused.append(item.source)

    async def probe(self, item: Pending[int]) -> Probe:
        self.probed.append(item.source)
        await asyncio.sleep(0)
        return next(self.answers)


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while not condition():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


@pytest.fixture(autouse=True)
def quick_misses(monkeypatch: pytest.MonkeyPatch) -> None:
    # Coalescing waits MISS_REFRESH_S between refreshes on a miss; the rule is the same shorter.
    monkeypatch.setattr("stream.labels.MISS_REFRESH_S", 0.05)


def make_gate(endpoint: Endpoint, outcomes: Outcomes, **options: Any) -> LabelGate[int]:
    return LabelGate(
        endpoint,  # type: ignore[arg-type]  # the gate calls only get_labels
        refresh_s=options.get("refresh_s", 300.0),
        overridden=options.get("overridden", ()),
        release=outcomes.release,
        refuse=outcomes.refuse,
        probe=outcomes.probe,
    )


def dynamic(*ids: str) -> list[Label]:
    return [Label(i, "dynamic") for i in ids]


async def test_a_listed_label_passes_at_once_after_the_first_load() -> None:
    endpoint, outcomes = Endpoint({ACCOUNT: dynamic(KNOWN)}), Outcomes()
    gate = make_gate(endpoint, outcomes)
    gate.start([ACCOUNT])
    await until(lambda: gate.registries().get(ACCOUNT, (0, None))[1] is not None, "the load")

    assert gate.admit([record(KNOWN, n=1), record(KNOWN, n=2)]) != []
    assert [p.source for p in gate.admit([record(KNOWN, n=3)])] == [3]
    assert endpoint.refreshes() == 1
    await gate.close()


async def test_an_id_the_registry_lists_upper_case_admits_its_records() -> None:
    # Validation lower-cases a record's label id; the registry's ids must be in the same case.
    endpoint, outcomes = Endpoint({ACCOUNT: dynamic(KNOWN.upper())}), Outcomes()
    gate = make_gate(endpoint, outcomes)
    gate.start([ACCOUNT])
    await until(lambda: gate.registries().get(ACCOUNT, (0, None))[1] is not None, "the load")

    assert [p.source for p in gate.admit([record(KNOWN, n=1)])] == [1]
    assert outcomes.refused == []
    await gate.close()


async def test_records_before_the_first_load_wait_for_it_and_pass() -> None:
    endpoint, outcomes = Endpoint({ACCOUNT: dynamic(KNOWN)}), Outcomes()
    gate = make_gate(endpoint, outcomes)

    assert gate.admit([record(KNOWN, n=1), record(KNOWN, n=2)]) == []
    await until(lambda: outcomes.released == [1, 2], "release")
    assert outcomes.refused == []
    assert gate.held() == 0
    await gate.close()


async def test_an_unknown_label_waits_for_a_later_refresh_and_is_refused_if_still_absent() -> None:
    endpoint, outcomes = Endpoint({ACCOUNT: dynamic(KNOWN)}), Outcomes()
    gate = make_gate(endpoint, outcomes)
    gate.start([ACCOUNT])
    await until(lambda: endpoint.refreshes() == 1 and gate.held() == 0, "the first load")

    assert gate.admit([record(FOREIGN, n=i) for i in range(50)]) == []
    await until(lambda: len(outcomes.refused) == 50, "refusals")
    # One refresh after the records arrived decided all fifty: misses are coalesced.
    assert endpoint.refreshes() == 2
    assert outcomes.released == []
    await gate.close()


async def test_a_label_created_while_running_is_used_without_a_restart() -> None:
    endpoint, outcomes = Endpoint({ACCOUNT: dynamic(KNOWN)}), Outcomes()
    gate = make_gate(endpoint, outcomes)
    gate.start([ACCOUNT])
    await until(lambda: endpoint.refreshes() == 1 and gate.held() == 0, "the first load")
    endpoint.labels[ACCOUNT] = dynamic(KNOWN, NEW)  # created in the console

    assert gate.admit([record(NEW, n=i) for i in range(2000)]) == []
    await until(lambda: len(outcomes.released) == 2000, "release")
    assert outcomes.refused == []
    assert gate.admit([record(NEW, n=9)]) != []  # known from now on
    await gate.close()


async def test_a_refresh_that_started_before_the_record_arrived_does_not_decide_it() -> None:
    endpoint, outcomes = Endpoint({ACCOUNT: dynamic(KNOWN)}), Outcomes()
    endpoint.gate = asyncio.Event()
    gate = make_gate(endpoint, outcomes)
    gate.start([ACCOUNT])
    await until(lambda: endpoint.refreshes() == 1, "the first load to start")
    gate.admit([record(NEW, n=1)])  # arrives while that load is under way
    endpoint.labels[ACCOUNT] = dynamic(KNOWN, NEW)  # the load read the list before this
    endpoint.gate.set()

    await until(lambda: outcomes.released == [1], "release by the second refresh")
    assert endpoint.refreshes() == 2
    assert outcomes.refused == []
    await gate.close()


async def test_every_page_is_read_and_only_dynamic_undeleted_labels_count() -> None:
    many = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(2500)]
    listed = [
        *dynamic(*many),
        Label(KNOWN, "static"),
        Label(NEW, "dynamic", deleted_at="2026-11-01T00:00:00.000Z"),
    ]
    endpoint, outcomes = Endpoint({ACCOUNT: listed}), Outcomes()
    gate = make_gate(endpoint, outcomes)
    gate.start([ACCOUNT])
    await until(lambda: gate.registries().get(ACCOUNT, (0, None))[0] == 2500, "the load")

    assert [page for _, page in endpoint.calls] == [1, 2, 3]
    assert len(gate.admit([record(many[-1])])) == 1
    assert gate.admit([record(KNOWN, n=1), record(NEW, n=2)]) == []
    await until(lambda: sorted(outcomes.refused) == [1, 2], "static and deleted refused")
    await gate.close()


async def test_an_unreadable_registry_probes_each_label_once() -> None:
    endpoint, outcomes = Endpoint(failing="the labels endpoint answered 503"), Outcomes()
    outcomes.answers = iter(["accepted", "label_refused"])
    gate = make_gate(endpoint, outcomes)

    gate.admit([record(KNOWN, n=i) for i in range(5)] + [record(FOREIGN, n=i) for i in range(5, 9)])
    await until(lambda: len(outcomes.released) + len(outcomes.refused) == 7, "both labels")

    # The probe of each label went alone; the others waited for its answer, apart from the rest.
    assert outcomes.probed == [0, 5]
    assert outcomes.released == [1, 2, 3, 4]
    assert outcomes.refused == [6, 7, 8]
    # Both are remembered: no more probes, and the refused label's records are not sent.
    assert [p.source for p in gate.admit([record(KNOWN, n=10)])] == [10]
    gate.admit([record(FOREIGN, n=11)])
    assert outcomes.refused == [6, 7, 8, 11]
    assert outcomes.probed == [0, 5]
    await gate.close()


async def test_a_record_refused_for_its_own_reason_does_not_condemn_its_label() -> None:
    endpoint, outcomes = Endpoint(failing="forbidden"), Outcomes()
    outcomes.answers = iter(["record_refused", "gone", "accepted"])
    gate = make_gate(endpoint, outcomes)

    gate.admit([record(NEW, n=i) for i in range(5)])
    await until(lambda: len(outcomes.released) == 2, "release")

    assert outcomes.probed == [0, 1, 2]
    assert outcomes.released == [3, 4]
    assert outcomes.refused == []
    await gate.close()


async def test_accounts_with_an_allow_list_skip_the_registry() -> None:
    endpoint, outcomes = Endpoint(), Outcomes()
    gate = make_gate(endpoint, outcomes, overridden={OTHER_ACCOUNT})

    items = [record(FOREIGN, OTHER_ACCOUNT, n=1)]
    assert gate.admit(items) == items
    assert endpoint.calls == []
    await gate.close()


async def test_the_registry_is_refreshed_every_interval() -> None:
    endpoint, outcomes = Endpoint({ACCOUNT: dynamic(KNOWN)}), Outcomes()
    gate = make_gate(endpoint, outcomes, refresh_s=0.05)
    gate.start([ACCOUNT])

    await until(lambda: endpoint.refreshes() >= 3, "periodic refreshes")
    assert gate.refreshes[(ACCOUNT, "ok")] >= 3
    await gate.close()


def test_many_registries_refresh_spread_not_in_one_burst() -> None:
    """1,000 accounts first read in the same second (a platform's start-up) refresh at most 7 a
    second (twice 1,000 per 300 s), the longest due first, and each within 150 s of its due time;
    none twice while others wait."""
    accounts = [f"{n:04d}" for n in range(1000)]
    started = dict.fromkeys(accounts, 0.0)
    per_second: list[int] = []
    now = 0.0
    while now < 600:
        now += 1.0
        going = due(started, len(accounts), now, refresh_s=300, tick_s=1.0)
        per_second.append(len(going))
        for account in going:
            started[account] = now
    assert max(per_second) == 7
    assert sum(per_second[:299]) == 0  # nothing is due before its 300 s
    first_round = per_second[299 : 299 + 143]
    assert sum(first_round) == 1000  # all refreshed again within 143 s of being due
    assert Counter(started.values()).most_common(1)[0][1] <= 7
