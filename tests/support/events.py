"""The call intents tests and benchmarks produce, and the :class:`Ledger` that produces them.

Event ``i`` is named by its receiver number, ``9198`` and ``i`` in eight digits: that is how the
sandbox's record of accepted records names it, so a test can tell which events arrived. Every
``invalid_every``-th event breaks one rule instead, cycling through :data:`INVALID`, and says
which code its dead letter must carry; that code is checked against the service's own validator
when the event is made, so a test proves that what the validator refuses reaches the DLQ with
that code, whatever it is.

By default every event looks the same but for its receiver and account; with an ``rng`` they vary
as a producer's would (numbers written in the usual ways, label names and call reasons that come
and go, some high priority), which is what the validation benchmark measures.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer

from stream.validation import Rejection, Rules, validate
from tests.support.kafka import produce

__all__ = [
    "ACCOUNTS",
    "EXPECT_HEADER",
    "ID_HEADER",
    "INVALID",
    "LABEL",
    "Event",
    "Ledger",
    "events",
    "expected_code",
    "intent",
    "valid",
]

ACCOUNTS = ("6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11", "7f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a12")
LABEL = "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"
HOUR_MS = 3_600_000

ID_HEADER = "fault.id"
"""Every message the ``Ledger`` produces carries its event's id here; the DLQ keeps the header, so a
dead letter names its original even when the value is random bytes or a tombstone."""
EXPECT_HEADER = "expect"
"""An invalid event's message carries the code its dead letter must have."""

RULES = Rules()
"""The service's rules as the ``service_factory`` configures it: no default account, any label."""

_LABELS = (LABEL, "2d7f1e0c-3b9a-4c6e-8f15-a0b2c4d6e8f0", "7e1d2c3b-4a5f-4687-9a0b-1c2d3e4f5a6b")
_LABEL_NAMES = ("Acme Deliveries", "City Hospital", "Bäckerei Müller", "First National Bank")
_REASONS = (
    "Your parcel is out for delivery",
    "Appointment reminder for tomorrow at 10:30",
    "Your card was used abroad, please confirm",
    "Driver is 5 minutes away",
)


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    value: bytes | None
    expect: str | None
    """None: valid, the API must accept it; else the code its dead letter must carry."""
    key: bytes | None = None


def _written(digits: str, rng: random.Random) -> str:
    """An Indian number (``91`` and ten digits) as people write it."""
    national = digits[2:]
    return rng.choice(
        [
            f"+{digits}",
            f"+91 {national[:3]} {national[3:6]} {national[6:]}",
            f"+91 ({national[:3]}) {national[3:6]}-{national[6:]}",
            digits,
        ]
    )


def intent(
    i: int,
    now_ms: int,
    *,
    accounts: Sequence[str] = ACCOUNTS,
    rng: random.Random | None = None,
    fields: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """Event ``i`` as a JSON object, valid by every rule, starting at ``now_ms`` for six hours;
    ``fields`` set last (a priority, a label id)."""
    receiver = f"9198{i:08d}"
    event: dict[str, object] = {
        "client_account_id": accounts[i % len(accounts)],
        "caller": "+91 80 4000 1000",
        "receiver": receiver,
        "label_id": LABEL,
        "call_reason": "Your order is out for delivery",
        "starts_at": now_ms,
        "ends_at": now_ms + 6 * HOUR_MS,
    }
    if rng is not None:
        event["caller"] = _written(f"9180{rng.randrange(10**8):08d}", rng)
        event["receiver"] = _written(receiver, rng)
        event["label_id"] = rng.choice(_LABELS)
        del event["call_reason"]
        if rng.random() < 0.7:
            event["label_name"] = rng.choice(_LABEL_NAMES)
        if rng.random() < 0.7:
            event["call_reason"] = rng.choice(_REASONS)
        if rng.random() < 0.1:
            event["priority"] = "high"
    event.update(fields or {})
    return event


def _stamp(event: dict[str, object], name: str) -> int:
    value = event[name]
    assert isinstance(value, int)
    return value


INVALID: tuple[tuple[str, Callable[[dict[str, object]], bytes]], ...] = (
    ("invalid_phone", lambda e: json.dumps({**e, "caller": "12"}).encode()),
    (
        "timestamp_seconds",
        lambda e: json.dumps({**e, "starts_at": _stamp(e, "starts_at") // 1000}).encode(),
    ),
    ("not_json", lambda e: b"{not json"),
    (
        "missing_field",
        lambda e: json.dumps({k: v for k, v in e.items() if k != "label_id"}).encode(),
    ),
    (
        "call_reason_characters",
        lambda e: json.dumps({**e, "call_reason": "50% off today!"}).encode(),
    ),
    (
        "window_inverted",
        lambda e: json.dumps({**e, "starts_at": _stamp(e, "ends_at") + 1}).encode(),
    ),
)
"""Invalid events, one per kind: the code the validator must give, and how to break an intent."""


def expected_code(value: bytes | None, now_ms: int) -> str | None:
    """The code the service's validator gives ``value``; None if it accepts it."""
    result = validate(value, rules=RULES, now_ms=now_ms)
    return result.code if isinstance(result, Rejection) else None


def valid(
    i: int,
    now_ms: int | None = None,
    *,
    accounts: Sequence[str] = ACCOUNTS,
    rng: random.Random | None = None,
    fields: Mapping[str, object] | None = None,
) -> Event:
    """Event ``i``, valid; keyed and named by its receiver number. ``now_ms`` None: the wall
    clock as it is made."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    event = intent(i, now_ms, accounts=accounts, rng=rng, fields=fields)
    receiver = f"9198{i:08d}"
    value = json.dumps(event, ensure_ascii=rng is None or rng.random() < 0.5).encode()
    return Event(receiver, value, None, receiver.encode())


def _invalid(
    i: int,
    now_ms: int,
    kind: int,
    accounts: Sequence[str],
    rng: random.Random | None,
    fields: Mapping[str, object] | None,
) -> Event:
    intended, make = INVALID[kind % len(INVALID)]
    value = make(intent(i, now_ms, accounts=accounts, rng=rng, fields=fields))
    code = expected_code(value, now_ms)
    assert code == intended, f"the validator gives {code}, not {intended}, for {value!r}"
    return Event(f"bad-{i}", value, code, f"bad-{i}".encode())


def events(
    count: int,
    *,
    start: int = 0,
    invalid_every: int = 0,
    now_ms: int | None = None,
    accounts: Sequence[str] = ACCOUNTS,
    rng: random.Random | None = None,
    fields: Mapping[str, object] | None = None,
) -> Iterator[Event]:
    """Events ``start`` to ``start + count``; every ``invalid_every``-th is invalid (0: none),
    the first of them at index ``invalid_every - 1``, so that a run starts with a valid one.
    ``now_ms`` None: each event's window starts at the wall clock as it is made. ``fields`` are
    set in every event (``{"priority": "high"}``)."""
    for i in range(start, start + count):
        now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        if invalid_every and i % invalid_every == invalid_every - 1:
            yield _invalid(i, now, i // invalid_every, accounts, rng, fields)
        else:
            yield valid(i, now, accounts=accounts, rng=rng, fields=fields)


class _Sender:
    """The idempotent producer ledgers send through: made at the first send and kept, so that a
    later send goes at once (a fresh one takes about half a second to send its first message,
    which a latency measured from the produce would count). Made no earlier, so that it does not
    ask a fresh broker for a producer id while the service beside it starts."""

    def __init__(self, bootstrap_servers: str) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._producer: Producer | None = None

    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(
                {
                    "bootstrap.servers": self._bootstrap_servers,
                    "linger.ms": 20,
                    "batch.size": 1_000_000,
                    "enable.idempotence": True,
                    # Anything a topic takes (up to the broker's 1 MiB + 12 by default), beyond
                    # the producer's own default of 1,000,000 bytes: a test may produce the largest.
                    "message.max.bytes": 2_000_000,
                }
            )
        return self._producer


@dataclass
class Ledger:
    """Produces events and keeps the proof obligations: who must be accepted, who dead-lettered,
    and where each one went."""

    bootstrap_servers: str
    topic: str
    partitions: int
    valid: set[str] = field(default_factory=set)
    invalid: dict[str, str] = field(default_factory=dict)
    """id → the code its dead letter must carry."""
    where: dict[str, tuple[int, int]] = field(default_factory=dict)
    """id → (partition, offset)."""
    produced_ms: dict[str, int] = field(default_factory=dict)
    """id → the wall clock (epoch ms) just before it was produced: where a latency starts."""
    produced: int = 0
    _sender: _Sender = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._sender = _Sender(self.bootstrap_servers)

    def beside(self, topic: str, partitions: int) -> Ledger:
        """A ledger of another topic that sends through this one's producer."""
        ledger = Ledger(self.bootstrap_servers, topic, partitions)
        ledger._sender = self._sender
        return ledger

    def produce(self, events: Iterable[Event]) -> set[str]:
        """Produce round-robin over the partitions (so each partition's order is known) and wait
        until Kafka acknowledged every one; their ids."""
        producer = self._sender.producer()
        failures: list[str] = []
        ids: set[str] = set()

        def delivered(event_id: str) -> Callable[[KafkaError | None, Message], None]:
            # A delivery report carries no headers: the id comes with the callback.
            def report(error: KafkaError | None, message: Message) -> None:
                partition, offset = message.partition(), message.offset()
                if error is not None or partition is None or offset is None:
                    failures.append(str(error))
                else:
                    self.where[event_id] = (partition, offset)

            return report

        for event in events:
            ids.add(event.id)
            headers: list[tuple[str, str | bytes | None]] = [(ID_HEADER, event.id.encode())]
            if event.expect is None:
                assert event.id not in self.valid, f"duplicate id {event.id}"
                self.valid.add(event.id)
            else:
                assert event.id not in self.invalid, f"duplicate id {event.id}"
                self.invalid[event.id] = event.expect
                headers.append((EXPECT_HEADER, event.expect.encode()))
            partition = self.produced % self.partitions
            self.produced += 1
            self.produced_ms[event.id] = time.time_ns() // 1_000_000
            produce(
                producer,
                self.topic,
                event.value,
                event.key,
                partition=partition,
                headers=headers,
                on_delivery=delivered(event.id),
            )
            producer.poll(0)
        assert producer.flush(120) == 0, "the test's producer could not deliver"
        assert not failures, failures[:5]
        return ids

    def first_invalid(self) -> dict[int, int]:
        """Per partition, the offset of its first invalid event."""
        first: dict[int, int] = {}
        for event_id in self.invalid:
            partition, offset = self.where[event_id]
            first[partition] = min(offset, first.get(partition, offset))
        return first
