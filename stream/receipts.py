"""Delivery receipts (``DCR_RECEIPTS_TOPIC``): one message per accepted request, and, when batch
statuses are reconciled, the records' outcomes (docs/design.md#reconciliation).

Each receipt has a ``kind``:

- ``accepted``: one per accepted request: which account, how many records, which source partitions
  and offset ranges, the HTTP status, the ``batch_id`` (v2's, or parsed from v1's message) and when
  it was sent;
- ``single``: records accepted through the single-record endpoint, which is synchronous: final at
  their 2xx, so never reconciled;
- ``outcome``: the reconciler's report for the records of a batch whose status is final, one
  ``Outcome`` per record (``delivered`` or ``failed`` with its code), with its source offset;
- ``recheck``: the records of a batch whose status was still pending, to be asked about again at
  ``check_at_ms`` (the reconciler's own to-do list; nobody else needs to read it).

Without reconciliation receipts are informational: a lost one never holds back a commit, so
``publish`` does not wait for the acknowledgement (a failure is logged). With it, an ``accepted``
receipt is the reconciler's only memory of the batch, so the pipeline writes it with ``send``,
which returns once Kafka acknowledged it, before the batch's offsets may be committed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message

from stream.errors import ReceiptError
from stream.producer import AckedProducer

__all__ = [
    "Outcome",
    "Range",
    "Receipt",
    "Receipts",
    "offset_ranges",
    "offsets_of",
    "outcome_receipt",
    "sources_of",
]

Kind = Literal["accepted", "single", "outcome", "recheck"]

_log = logging.getLogger("stream.receipts")


class Range(msgspec.Struct, frozen=True, array_like=True):
    first: int
    last: int


class Outcome(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One record's final status (an ``outcome`` receipt holds one per record)."""

    topic: str
    partition: int
    offset: int
    status: Literal["delivered", "failed"]
    code: str | None = None
    """For ``failed``: a code of stage ``status`` (docs/dlq.md#status)."""
    message: str | None = None
    """The API's message about the record, if any."""
    id: str | None = None
    """The API's id of the record, if it gave one."""


class Receipt(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    account: str
    records: int
    status: int
    batch_id: str | None
    sent_at_ms: int
    """When the batch was accepted (every kind keeps the ``accepted`` receipt's)."""
    sources: dict[str, list[Range]]
    """``topic/partition`` → offset ranges ``[first, last]`` of the records in the request (of
    ``recheck``: those still pending; of ``outcome``: those reported)."""
    kind: Kind = "accepted"
    outcomes: list[Outcome] = []
    """``outcome`` only."""
    check_at_ms: int = 0
    """``recheck`` only: when to ask again."""
    attempt: int = 0
    """``recheck`` only: how many times the status was found pending."""


def offsets_of(sources: Mapping[str, list[Range]]) -> list[tuple[str, int, int]]:
    """Every (topic, partition, offset) the ranges cover, in order."""
    positions: list[tuple[str, int, int]] = []
    for key, ranges in sources.items():
        topic, _, partition = key.rpartition("/")
        for run in ranges:
            positions.extend((topic, int(partition), o) for o in range(run.first, run.last + 1))
    return positions


def offset_ranges(positions: Iterable[tuple[str, int, int]]) -> dict[str, list[Range]]:
    """Group (topic, partition, offset) into contiguous ranges per partition."""
    by_partition: dict[str, list[int]] = {}
    for topic, partition, offset in positions:
        by_partition.setdefault(f"{topic}/{partition}", []).append(offset)
    ranges: dict[str, list[Range]] = {}
    for key, offsets in by_partition.items():
        offsets.sort()
        runs: list[Range] = []
        first = last = offsets[0]
        for offset in offsets[1:]:
            if offset != last + 1:
                runs.append(Range(first, last))
                first = offset
            last = offset
        runs.append(Range(first, last))
        ranges[key] = runs
    return ranges


class Receipts:
    """Produces receipts to one topic, keyed by account (so an account's receipts stay in order on
    one partition); acknowledged by every in-sync replica."""

    def __init__(self, config: Mapping[str, Any], topic: str) -> None:
        self.topic = topic
        self._producer = AckedProducer({**config, "linger.ms": 5}, name="receipts")
        self._encoder = msgspec.json.Encoder()

    def __repr__(self) -> str:
        return f"Receipts(topic={self.topic!r})"

    @property
    def alive(self) -> bool:
        """Whether its producer's poll thread runs (``AckedProducer.alive``)."""
        return self._producer.alive

    def publish(self, receipt: Receipt) -> None:
        """Queue a receipt; never raises: its records are already finished, and an exception here
        would have the delivery engine send them again."""
        try:
            self._producer.produce(
                self.topic,
                key=receipt.account.encode(),
                value=self._encoder.encode(receipt),
                on_delivery=_logged,
            )
        except (BufferError, KafkaException) as exc:
            _log.warning("a receipt was not written: %s", exc)

    async def send(self, receipt: Receipt) -> None:
        """Write a receipt; return once Kafka acknowledged it, else raise ``ReceiptError``."""
        try:
            error = await self._producer.send(
                self.topic, key=receipt.account.encode(), value=self._encoder.encode(receipt)
            )
        except KafkaException as exc:
            raise ReceiptError(self.topic, str(exc)) from None
        if error is not None:
            raise ReceiptError(self.topic, error.str())

    def close(self, timeout_s: float = 2.0) -> None:
        left = self._producer.close(timeout_s)
        if left:
            _log.warning("%d receipts were not acknowledged before shutdown", left)


def _logged(error: KafkaError | None, _: Message) -> None:
    if error is not None:
        _log.warning("a receipt was not written: %s", error.str())


def outcome_receipt(
    receipt: Receipt, outcomes: list[Outcome], sources: dict[str, list[Range]]
) -> Receipt:
    """The ``outcome`` receipt that reports ``outcomes`` of ``receipt``'s batch
    (docs/operations.md#receipts)."""
    return msgspec.structs.replace(
        receipt,
        kind="outcome",
        records=len(outcomes),
        sources=sources,
        outcomes=outcomes,
        check_at_ms=0,
        attempt=0,
    )


def sources_of(messages: Iterable[Message]) -> dict[str, list[Range]]:
    """The offset ranges of ``messages``, as a receipt names its records' sources."""
    return offset_ranges((m.topic() or "", m.partition() or 0, m.offset() or 0) for m in messages)
