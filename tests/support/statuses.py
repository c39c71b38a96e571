"""What the reconciliation tests share: events to receivers the sandbox reports failed, and the
outcomes the service reported for them (docs/design.md#reconciliation).

Event ``i`` goes to ``9199`` and ``i`` in eight digits when it is one of the ``share`` the sandbox
reports "not a Truecaller user" (``NOT_USER_PREFIX``), else to ``9198`` and ``i``; its id is its
receiver, as in ``tests.support.events``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Message, TopicPartition

from stream.dlq import ERROR_CODE, ERROR_STAGE, SOURCE_OFFSET, SOURCE_PARTITION
from tests.support.events import Event, Ledger, intent
from tests.support.kafka import header_texts, read_topic, unique

__all__ = [
    "NOT_USER_PREFIX",
    "Outcomes",
    "not_user_events",
    "topic_size",
]

NOT_USER_PREFIX = "9199"
"""Receivers the sandbox reports as not Truecaller users, in these tests."""


def not_user_events(count: int, *, every: int = 100, failing: int = 3) -> Iterator[Event]:
    """``count`` valid events; of each ``every``, the first ``failing`` go to not-users."""
    now_ms = time.time_ns() // 1_000_000
    for i in range(count):
        event = intent(i, now_ms)
        prefix = NOT_USER_PREFIX if i % every < failing else "9198"
        receiver = f"{prefix}{i:08d}"
        event["receiver"] = receiver
        yield Event(receiver, json.dumps(event).encode(), None, receiver.encode())


def topic_size(bootstrap_servers: str, topic: str) -> int:
    """Messages in ``topic`` now (0 if it does not exist yet)."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": unique("size")})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return 0
        total = 0
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += max(0, high - low)
        return total
    finally:
        consumer.close()


@dataclass
class Outcomes:
    """What the service reported: the outcome receipts and the status dead letters, by event id."""

    ledger: Ledger
    receipts: list[dict[str, object]] = field(default_factory=list)
    reported: Counter[str] = field(default_factory=Counter)
    """Event id → how many outcomes were reported for it."""
    status: dict[str, str] = field(default_factory=dict)
    """Event id → its last reported status (``delivered``, or the failure's code)."""
    letters: dict[str, list[Message]] = field(default_factory=dict)
    """Event id → its dead letters of stage ``status``."""

    @classmethod
    def read(
        cls,
        bootstrap_servers: str,
        ledger: Ledger,
        *,
        letters: int,
        receipts: str | None = None,
        dlq: str | None = None,
    ) -> Outcomes:
        """Read them all, from the ledger's topic's default receipts and dead-letter topics unless
        told otherwise; ``letters``: how many dead letters to wait for."""
        receipts = receipts or f"{ledger.topic}.receipts"
        dlq = dlq or f"{ledger.topic}.dlq"
        found = cls(ledger)
        by_position = {where: event_id for event_id, where in ledger.where.items()}
        for message in read_topic(bootstrap_servers, receipts):
            body = json.loads(message.value() or b"")
            if body.get("kind") != "outcome":
                continue
            found.receipts.append(body)
            for outcome in body["outcomes"]:
                event_id = by_position[(outcome["partition"], outcome["offset"])]
                found.reported[event_id] += 1
                found.status[event_id] = (
                    "delivered" if outcome["status"] == "delivered" else outcome["code"]
                )
        for message in read_topic(bootstrap_servers, dlq, at_least=letters):
            texts = header_texts(message)
            if texts[ERROR_STAGE] != "status":
                continue
            where = (int(texts[SOURCE_PARTITION]), int(texts[SOURCE_OFFSET]))
            found.letters.setdefault(by_position[where], []).append(message)
            assert texts[ERROR_CODE], texts
        return found
