"""The offset tracker: the finished prefix, out-of-order results, generations, and the age of the
oldest unfinished record (a clock the test moves)."""

from __future__ import annotations

from stream.offsets import OffsetTracker, Stall, Ticket

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


def test_a_partition_being_revoked_stops_its_records_but_still_commits_what_finishes() -> None:
    tracker = OffsetTracker()
    tracker.assign([(T, 0), (T, 1)])
    sent, queued = received(tracker, 0, 0), received(tracker, 0, 1)
    other = received(tracker, 1, 0)
    tracker.leave([(T, 0)])
    assert not sent.run.live
    assert not queued.run.live
    assert other.run.live
    assert tracker.receive(T, 0, 2) is None  # consumed before the revoke, handed over after it
    tracker.finish(sent)  # a request on its way when the revoke began is answered
    assert tracker.to_commit([(T, 0)]) == {(T, 0): 1}
    tracker.forget([(T, 0), (T, 1)])
    assert not other.run.live


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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_oldest_unfinished_record_is_the_first_of_the_oldest_run() -> None:
    clock = Clock()
    tracker = OffsetTracker(clock)
    tracker.assign([(T, 0), (T, 1)])
    first = tracker.receive_run(T, 0, [10, 11, 12])
    assert first is not None
    clock.now += 30
    later = received(tracker, 0, 13)
    clock.now += 5
    assert tracker.oldest() == {(T, 0): 35.0, (T, 1): 0.0}
    tracker.finish_all([Ticket(first, 0), Ticket(first, 1), Ticket(first, 2)])
    assert tracker.oldest() == {(T, 0): 5.0, (T, 1): 0.0}
    tracker.finish(later)
    assert tracker.oldest() == {(T, 0): 0.0, (T, 1): 0.0}


def test_a_stall_is_reported_once_and_its_end_too() -> None:
    clock = Clock()
    tracker = OffsetTracker(clock)
    tracker.assign([(T, 0), (T, 1)])
    run = tracker.receive_run(T, 0, [7, 8])
    assert run is not None
    tracker.finish(Ticket(run, 0))
    clock.now += 100
    other = received(tracker, 1, 3)
    clock.now += 80
    assert tracker.stalls(180) == ([], [])
    clock.now += 1
    assert tracker.stalls(180) == ([Stall((T, 0), 8, 181.0)], [])
    clock.now += 60  # partition 0 still stuck: not reported again, however long it lasts
    assert tracker.stalls(180) == ([], [])
    clock.now += 60
    assert tracker.stalls(180) == ([Stall((T, 1), 3, 201.0)], [])
    clock.now += 600
    assert tracker.stalls(180) == ([], [])
    tracker.finish(Ticket(run, 1))
    assert tracker.stalls(180) == ([], [(T, 0)])
    assert tracker.stalls(180) == ([], [])
    tracker.finish(other)
    assert tracker.stalls(180) == ([], [(T, 1)])
    received(tracker, 0, 9)
    clock.now += 181
    assert tracker.stalls(180) == ([Stall((T, 0), 9, 181.0)], [])


def test_a_run_is_tracked_until_finished_or_its_partition_goes() -> None:
    tracker = OffsetTracker()
    tracker.assign([(T, 0)])
    first, second = received(tracker, 0, 0), received(tracker, 0, 1)
    assert tracker.tracks(first.run)
    assert tracker.tracks(second.run)
    tracker.finish(first)
    assert not tracker.tracks(first.run)
    tracker.forget([(T, 0)])
    tracker.assign([(T, 0)])
    assert not tracker.tracks(second.run)
    assert tracker.tracks(received(tracker, 0, 1).run)
