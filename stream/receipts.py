"""Delivery receipts (optional, ``DCR_RECEIPTS_TOPIC``): one message per accepted request.

A receipt says which account, how many records, which source partitions and offset ranges, the
HTTP status, the v2 ``batch_id`` and when it was sent, so users can reconcile with Truecaller's
batch-status endpoint. Receipts are informational: a lost receipt never holds back a commit, so
they are produced without waiting for the acknowledgement (a failure is logged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer

__all__ = ["Receipt", "Receipts"]

_log = logging.getLogger("stream.receipts")


class Range(msgspec.Struct, frozen=True, array_like=True):
    first: int
    last: int


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    account: str
    records: int
    status: int
    batch_id: str | None
    sent_at_ms: int
    sources: dict[str, list[Range]]
    """``topic/partition`` → offset ranges ``[first, last]`` of the records in the request."""


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
    """Produces receipts to one topic, keyed by account."""

    def __init__(self, config: Mapping[str, Any], topic: str) -> None:
        self.topic = topic
        self._producer = Producer({**config, "linger.ms": 100})
        self._encoder = msgspec.json.Encoder()

    def __repr__(self) -> str:
        return f"Receipts(topic={self.topic!r})"

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
        self._producer.poll(0)

    def close(self, timeout_s: float = 2.0) -> None:
        left = self._producer.flush(timeout_s)
        if left:
            _log.warning("%d receipts were not acknowledged before shutdown", left)


def _logged(error: KafkaError | None, _: Message) -> None:
    if error is not None:
        _log.warning("a receipt was not written: %s", error.str())
