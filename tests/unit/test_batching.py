"""The batcher: count, linger and byte caps; one account and one priority per batch."""

from __future__ import annotations

import asyncio

import pytest

from stream.batching import Batch, Batcher, Pending, record_size
from stream.events import Record, encode_batch
from stream.lanes import Lane

A, B = "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11", "7f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a12"
LABEL = "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"


def record(account: str = A, *, high: bool = False, reason: str | None = None) -> Record:
    return Record(
        account=account,
        caller="918040001000",
        receiver="919800000001",
        label_id=LABEL,
        label_name=None,
        call_reason=reason,
        starts_at=1_900_000_000_000,
        ends_at=1_900_000_360_000,
        high_priority=high,
    )


def test_full_batches_close_at_max_records() -> None:
    batcher: Batcher[int] = Batcher(max_records=500, linger_s=1.0, max_bytes=10**9)
    closed = [b for i in range(1200) if (b := batcher.add(Pending(record(), i), 0.0))]
    assert [len(b.items) for b in closed] == [500, 500]
    assert len(batcher) == 200
    assert [len(b.items) for b in batcher.drain()] == [200]


def test_accounts_and_priorities_never_share_a_batch() -> None:
    batcher: Batcher[int] = Batcher(max_records=500, linger_s=1.0, max_bytes=10**9)
    for i, (account, high) in enumerate([(A, False), (B, False), (A, True), (A, False)]):
        batcher.add(Pending(record(account, high=high), i), 0.0)
    batches = {(b.account, b.high_priority): [p.source for p in b.items] for b in batcher.drain()}
    assert batches == {(A, False): [0, 3], (B, False): [1], (A, True): [2]}


def test_linger_is_measured_from_the_oldest_record() -> None:
    batcher: Batcher[int] = Batcher(max_records=500, linger_s=0.2, max_bytes=10**9)
    batcher.add(Pending(record(), 1), 10.0)
    batcher.add(Pending(record(), 2), 10.15)
    assert batcher.next_deadline() == pytest.approx(10.2)
    assert batcher.due(10.199) == []
    [batch] = batcher.due(10.2)
    assert [p.source for p in batch.items] == [1, 2]
    assert batcher.next_deadline() is None


def test_byte_cap_closes_the_batch_before_it_overflows() -> None:
    size = record_size(record())
    batcher: Batcher[int] = Batcher(max_records=500, linger_s=1.0, max_bytes=3 * size)
    closed = [b for i in range(7) if (b := batcher.add(Pending(record(), i), 0.0))]
    assert [len(b.items) for b in closed] == [3, 3]
    assert all(b.size <= 3 * size for b in closed)


@pytest.mark.parametrize(
    "reason", [None, "Your parcel is on its way", "Ваша посылка в пути сегодня"]
)
def test_record_size_bounds_the_encoded_size(reason: str | None) -> None:
    r = record(reason=reason)
    one = len(encode_batch([r], "v2")) - len(b'{"call_records":[]}')
    assert one <= record_size(r)


def test_max_records_above_the_api_limit_is_refused() -> None:
    with pytest.raises(ValueError, match=r"1\.\.500"):
        Batcher(max_records=501, linger_s=1.0, max_bytes=10**9)


def test_an_open_batch_can_be_taken_however_young() -> None:
    batcher: Batcher[int] = Batcher(max_records=500, linger_s=60.0, max_bytes=10**9)
    batcher.add(Pending(record(high=True), 1), 0.0)
    batcher.add(Pending(record(), 2), 0.0)
    assert batcher.holds(A, True)
    assert not batcher.holds(B, True)
    taken = batcher.take(A, True)
    assert taken is not None
    assert [p.source for p in taken.items] == [1]
    assert not batcher.holds(A, True)
    assert batcher.take(A, True) is None
    assert [p.source for b in batcher.drain() for p in b.items] == [2]


def test_a_batch_joins_another_only_when_both_fit_one_request() -> None:
    size = record_size(record())
    batcher: Batcher[int] = Batcher(max_records=4, linger_s=1.0, max_bytes=3 * size)
    into: Batch[int] = Batch(A, False)
    other: Batch[int] = Batch(A, False)
    for i, batch in enumerate((into, other)):
        batch.items.append(Pending(record(), i))
        batch.size += size
    assert batcher.join(into, other)
    assert ([p.source for p in into.items], into.size) == ([0, 1], 2 * size)
    assert not batcher.join(into, Batch(A, False, [Pending(record(), 2)] * 2, size=2 * size))
    assert not batcher.join(into, Batch(A, True, [Pending(record(), 2)], size=size))
    assert len(into.items) == 2  # a refused join leaves both as they were


def test_tried_batches_and_probes_are_never_joined() -> None:
    batcher: Batcher[int] = Batcher(max_records=500, linger_s=1.0, max_bytes=10**9)
    fresh = Batch(A, False, [Pending(record(), 0)], size=1)
    loop = asyncio.new_event_loop()
    try:
        for into in (
            Batch(A, False, [Pending(record(), 1)], attempt=1),
            Batch(A, False, [Pending(record(), 1)], auth_403=True),
            Batch(A, False, [Pending(record(), 1)], probe=loop.create_future()),
            Batch(A, False, [Pending(record(), 1)], single=True),
            Batch(A, False, [Pending(record(), 1)], bisected=True),
        ):
            assert not batcher.join(into, fresh)
        assert not batcher.join(fresh, Batch(A, False, [], probe=loop.create_future()))
        assert not batcher.join(fresh, Batch(A, False, [], bisected=True))
    finally:
        loop.close()


def test_a_lane_joins_a_batch_with_its_neighbour_never_with_a_bisected_half() -> None:
    batcher: Batcher[int] = Batcher(max_records=500, linger_s=1.0, max_bytes=10**9)
    lane: Lane[int] = Lane(None, batcher.join)

    def fresh(*sources: int, high: bool = False) -> Batch[int]:
        return Batch(A, high, [Pending(record(high=high), i) for i in sources])

    def queued() -> list[list[int]]:
        return [[p.source for p in b.items] for b in lane.normal]

    lane.put(fresh(0))
    lane.put(fresh(5, high=True))  # the other queue
    lane.put(fresh(1))
    assert queued() == [[0, 1]]
    taken = lane.normal.popleft()
    lane.put(fresh(2))  # while ``taken`` waited for its claim
    lane.put(taken, front=True)  # its claim was refused: it joins the next in line
    assert queued() == [[0, 1, 2]]
    lane.put(
        Batch(A, False, [Pending(record(), 8), Pending(record(), 9)], bisected=True), front=True
    )
    lane.put(fresh(3), front=True)  # a half is never joined, from either side
    assert queued() == [[3], [8, 9], [0, 1, 2]]
    assert [[p.source for p in b.items] for b in lane.high] == [[5]]
