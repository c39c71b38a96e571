"""The commit loop without a broker: what moved is committed, what Kafka refused is counted per
group and offered again, and a round that raises is logged and survived (the waits recorded, not
slept)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from stream.commits import Committer
from stream.metrics import Counts, Metrics
from stream.offsets import OffsetTracker, TopicPartitionKey
from tests.support.metrics import idle_state

T = "receipts"
Positions = dict[TopicPartitionKey, int]


class _Consumer:
    """Stands in for ``ConsumerThread.commit``: accepts the partitions in ``accepts``."""

    def __init__(self, accepts: set[int]) -> None:
        self.accepts = accepts
        self.asked: list[Positions] = []
        self.broken = 0
        """Rounds that raise before the commit is made."""

    async def commit(self, positions: Positions) -> Positions:
        self.asked.append(positions)
        if self.broken:
            self.broken -= 1
            raise RuntimeError("the consumer thread is gone")
        return {tp: p for tp, p in positions.items() if tp[1] in self.accepts}


def _finished(tracker: OffsetTracker, partition: int, offset: int) -> None:
    ticket = tracker.receive(T, partition, offset)
    assert ticket is not None
    tracker.finish(ticket)


def _committer(
    consumer: _Consumer, counts: Counts, rounds: list[str] | None = None
) -> tuple[Committer, OffsetTracker]:
    tracker = OffsetTracker()
    tracker.assign([(T, 0), (T, 1)])
    committer = Committer(
        tracker,
        consumer.commit,
        group="reconcile",
        interval_s=1.0,
        counts=counts,
        each_round=(lambda: rounds.append("round")) if rounds is not None else lambda: None,
        wall=lambda: 1_700_000_000.0,
    )
    return committer, tracker


async def test_refused_partitions_are_counted_for_the_group_and_offered_again() -> None:
    counts, consumer = Counts(), _Consumer(accepts={0})
    committer, tracker = _committer(consumer, counts)
    assert counts.commit_failures == {"reconcile": 0}, "served as 0 before any failure"
    _finished(tracker, 0, 5)
    _finished(tracker, 1, 9)

    await committer.commit_once()

    assert consumer.asked == [{(T, 0): 6, (T, 1): 10}]
    assert counts.commit_failures == {"reconcile": 1}
    assert committer.last_commit_s == 1_700_000_000.0
    assert tracker.to_commit() == {(T, 1): 10}, "the refused one is offered again"


async def test_nothing_moved_nothing_committed() -> None:
    counts, consumer = Counts(), _Consumer(accepts={0, 1})
    committer, _ = _committer(consumer, counts)

    await committer.commit_once()

    assert consumer.asked == []
    assert committer.last_commit_s == 0.0


async def test_a_commit_wholly_refused_is_no_commit() -> None:
    counts, consumer = Counts(), _Consumer(accepts=set())
    committer, tracker = _committer(consumer, counts)
    _finished(tracker, 0, 0)

    await committer.commit_once()

    assert counts.commit_failures == {"reconcile": 1}
    assert committer.last_commit_s == 0.0


async def test_the_loop_survives_a_round_that_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    counts, consumer = Counts(), _Consumer(accepts={0, 1})
    rounds: list[str] = []
    committer, tracker = _committer(consumer, counts, rounds)
    consumer.broken = 1
    _finished(tracker, 0, 0)
    waits: list[float] = []

    async def sleep(delay: float) -> None:
        waits.append(delay)
        if len(waits) > 3:
            raise asyncio.CancelledError

    monkeypatch.setattr("stream.commits.asyncio.sleep", sleep)
    with (
        caplog.at_level(logging.ERROR, logger="stream.commits"),
        pytest.raises(asyncio.CancelledError),
    ):
        await committer.run()

    assert waits == [1.0, 1.0, 1.0, 1.0]
    assert rounds == ["round"] * 3
    assert consumer.asked == [{(T, 0): 1}, {(T, 0): 1}], "the positions were still there"
    assert tracker.to_commit() == {}
    assert [r.getMessage() for r in caplog.records] == [
        "periodic commit of the reconcile group failed"
    ]
    assert counts.commit_failures == {"reconcile": 0}, "a round that raised is no refusal"


def test_both_groups_are_served_under_one_metric() -> None:
    metrics = Metrics()
    metrics.counts.commit_failures.update({"input": 0, "reconcile": 2})
    metrics.watch(idle_state())
    text = metrics.exposition().decode()
    assert 'dcr_commit_failures_total{group="input"} 0.0' in text
    assert 'dcr_commit_failures_total{group="reconcile"} 2.0' in text
