"""The offset tracker: the finished prefix, out-of-order results, generations."""

from __future__ import annotations

from stream.offsets import OffsetTracker, Ticket

T = "topic"


def received(tracker: OffsetTracker, partition: int, offset: int) -> Ticket:
    """The ticket of a record of a partition the tracker owns."""
    ticket = tracker.receive(T, partition, offset)
    assert ticket is not None
    return ticket


def test_position_is_one_past_the_finished_prefix() -> None:
    tracker = OffsetTracker()
    tracker.assign([(T, 0)])
    tickets = [received(tracker, 0, offset) for offset in (5, 6, 8, 9)]  # 7: a compacted gap
    tracker.finish(tickets[1])
    assert tracker.to_commit() == {}
    tracker.finish(tickets[0])
    assert tracker.to_commit() == {(T, 0): 7}
    tracker.finish(tickets[3])
    assert tracker.to_commit() == {(T, 0): 7}
    tracker.finish(tickets[2])
    assert tracker.to_commit() == {(T, 0): 10}
    assert tracker.unfinished() == 0


def test_committed_positions_are_not_committed_again() -> None:
    tracker = OffsetTracker()
    tracker.assign([(T, 0), (T, 1)])
    ticket = received(tracker, 0, 0)
    tracker.finish(ticket)
    tracker.committed({(T, 0): 1})
    assert tracker.to_commit() == {}


def test_results_of_an_earlier_assignment_are_ignored() -> None:
    tracker = OffsetTracker()
    tracker.assign([(T, 0)])
    old = received(tracker, 0, 0)
    tracker.forget([(T, 0)])
    tracker.assign([(T, 0)])
    new = received(tracker, 0, 0)
    tracker.finish(old)
    assert tracker.to_commit() == {}
    assert tracker.unfinished() == 1
    tracker.finish(new)
    assert tracker.to_commit() == {(T, 0): 1}


def test_records_of_partitions_not_owned_get_no_ticket() -> None:
    tracker = OffsetTracker()
    assert tracker.receive(T, 3, 0) is None


def test_unfinished_counts_per_partition() -> None:
    tracker = OffsetTracker()
    tracker.assign([(T, 0), (T, 1)])
    tracker.receive(T, 0, 0)
    tracker.receive(T, 1, 0)
    tracker.receive(T, 1, 1)
    assert tracker.unfinished([(T, 1)]) == 2
    assert tracker.unfinished() == 3
