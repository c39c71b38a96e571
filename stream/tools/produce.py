"""``dcr-stream produce``: synthetic call-intent events, fast, to a topic.

``events(mix, count)`` makes the events; the demo and the tests use it too, and each event says what
should become of it (``Event.expect``): ``valid``, ``unregistered_label`` (valid for us, refused by
the API until it learns the label: stage ``api``), or the rejection code of an invalid event.

Valid events are formatted from byte templates prepared once per account, caller and label, so the
generator costs about a microsecond an event and librdkafka's batching (``PRODUCER_TUNING``) does
the rest: a million events leave in a few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from stream.settings import parse_positive, parse_uuid, setting
from stream.tools.args import EXIT_USAGE, arg_type, at_least_one
from stream.tools.kafka import (
    CONNECT_TIMEOUT_S,
    add_bootstrap_servers,
    kafka_config,
    topic_partitions,
)
from stream.tools.progress import Progress
from stream.topics import TopicSpec, ensure_topics

__all__ = [
    "DEFAULT_LABEL_ID",
    "INVALID_KINDS",
    "PRODUCER_TUNING",
    "Event",
    "Mix",
    "Produced",
    "account_ids",
    "add_parser",
    "default_topic",
    "ensure_topic",
    "events",
    "produce",
    "run",
]

DEFAULT_LABEL_ID = "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"
"""The label id of events when none is given (``--label-id``)."""

_ACCOUNT_NAMESPACE = uuid.UUID("5d0c6b1e-2f55-4bb4-9a07-dc3e5d1a0c7e")

PRODUCER_TUNING: dict[str, str | int | float | bool] = {
    "linger.ms": 50,
    "batch.size": 1_000_000,
    "batch.num.messages": 100_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "acks": "all",
    "enable.idempotence": True,
    "log.connection.close": False,
}
"""Large, compressed, lingering batches: the broker sees a few thousand requests for a million
events. Idempotence keeps a retried batch from being written twice."""

_HOURS_MS = 3_600_000
_WINDOW_MS = 6 * _HOURS_MS
"""``ends_at`` of every event is this long after its ``starts_at``, the time of making."""
_TEXTS = (
    ("Delivery", "Your order is out for delivery"),
    ("Appointments", "Calling about your appointment tomorrow"),
    ("Card services", "Your card replacement is ready"),
    ("Support", "Follow up on your support ticket"),
    ("Reservations", "Confirming your table reservation"),
)
"""(label_name, call_reason) pairs, valid by every rule."""


def account_ids(count: int) -> tuple[str, ...]:
    """``count`` client account ids, the same on every run (so a sandbox can be told them)."""
    return tuple(str(uuid.uuid5(_ACCOUNT_NAMESPACE, f"account-{i}")) for i in range(count))


class Event(NamedTuple):
    key: bytes
    value: bytes
    expect: str
    """``valid``, ``unregistered_label``, or the rejection code the event must be dead-lettered
    with (a key of ``INVALID_KINDS``)."""


def _dumps(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


INVALID_KINDS: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "invalid_phone": lambda e: _dumps({**e, "caller": "12345"}),
    "timestamp_seconds": lambda e: _dumps({**e, "starts_at": e["starts_at"] // 1000}),
    "not_json": lambda e: _dumps(e)[:40],
    "missing_field": lambda e: _dumps({k: v for k, v in e.items() if k != "label_id"}),
    "call_reason_characters": lambda e: _dumps({**e, "call_reason": "50% off today only!"}),
    "window_inverted": lambda e: _dumps({**e, "starts_at": e["ends_at"] + 60_000}),
    "expired": lambda e: _dumps(
        {**e, "starts_at": e["starts_at"] - 2 * _HOURS_MS, "ends_at": e["starts_at"] - _HOURS_MS}
    ),
    "invalid_uuid": lambda e: _dumps({**e, "label_id": "not-a-label-id"}),
}
"""The invalid events ``events`` makes, by the code ``stream.validation`` gives each."""


@dataclass(frozen=True, kw_only=True)
class Mix:
    """What ``events`` makes: accounts and labels to draw from, and the share of each kind."""

    accounts: tuple[str, ...] = field(default_factory=lambda: account_ids(1))
    label_ids: tuple[str, ...] = (DEFAULT_LABEL_ID,)
    invalid_ratio: float = 0.0
    """Events broken in one of the ``INVALID_KINDS`` ways, in turn."""
    high_priority_ratio: float = 0.0
    unregistered_label_ids: tuple[str, ...] = ()
    unregistered_ratio: float = 0.0
    """Valid events that carry one of ``unregistered_label_ids`` instead."""
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.accounts or not self.label_ids:
            raise ValueError("a mix needs at least one account and one label id")
        for name in ("invalid_ratio", "high_priority_ratio", "unregistered_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.unregistered_ratio and not self.unregistered_label_ids:
            raise ValueError("unregistered_ratio needs unregistered_label_ids")


def events(mix: Mix, count: int | None = None) -> Iterator[Event]:
    """``count`` events (None: without end). Event ``i`` goes to receiver ``+9198`` and ``i`` in 8
    digits, so receivers are unique within a run of up to 10⁸ events; the key of an event is
    ``caller:receiver`` (digits); ``starts_at`` is the time of making."""
    rng = random.Random(mix.seed)
    clock = time.time_ns
    invalid_kinds = list(INVALID_KINDS.items())
    # Per account: (caller digits, the value up to the receiver's digits) for a few callers.
    heads = [
        [
            (
                digits.encode(),
                b'{"client_account_id":"%s","caller":"+%s","receiver":"+'
                % (account.encode(), digits.encode()),
            )
            for digits in (f"91804{n:03d}{c:04d}" for c in range(3))
        ]
        for n, account in enumerate(mix.accounts)
    ]

    def tails(labels: tuple[str, ...]) -> list[bytes]:
        return [
            b'","label_id":"%s","label_name":"%s","call_reason":"%s","starts_at":'
            % (label.encode(), name.encode(), reason.encode())
            for label in labels
            for name, reason in _TEXTS
        ]

    known, unregistered = tails(mix.label_ids), tails(mix.unregistered_label_ids)
    invalid_made = 0
    random_, choice = rng.random, rng.choice
    i = 0
    while count is None or i < count:
        which = int(random_() * len(heads))
        caller, head = choice(heads[which])
        receiver = b"9198%08d" % (i % 100_000_000)
        key = caller + b":" + receiver
        now = clock() // 1_000_000
        i += 1
        if random_() < mix.invalid_ratio:
            code, make = invalid_kinds[invalid_made % len(invalid_kinds)]
            invalid_made += 1
            name, reason = choice(_TEXTS)
            event = {
                "client_account_id": mix.accounts[which],
                "caller": f"+{caller.decode()}",
                "receiver": f"+{receiver.decode()}",
                "label_id": choice(mix.label_ids),
                "label_name": name,
                "call_reason": reason,
                "starts_at": now,
                "ends_at": now + _WINDOW_MS,
            }
            yield Event(key, make(event), code)
            continue
        expect = "valid"
        if mix.unregistered_ratio and random_() < mix.unregistered_ratio:
            tail, expect = choice(unregistered), "unregistered_label"
        else:
            tail = choice(known)
        end_ = b',"priority":"high"}' if random_() < mix.high_priority_ratio else b"}"
        value = b'%s%s%s%d,"ends_at":%d%s' % (head, receiver, tail, now, now + _WINDOW_MS, end_)
        yield Event(key, value, expect)


def ensure_topic(config: Mapping[str, Any], topic: str, partitions: int) -> int:
    """The partition count of ``topic``, created with ``partitions`` only when it does not exist
    (``stream.topics``).

    Raises ``DcrStreamError`` in one line when the cluster cannot be reached.
    """
    # log_level 0: an unreachable broker is reported once, by us, not by librdkafka every second.
    admin_config = {**config, "log_level": 0}
    topic_partitions(AdminClient(admin_config), config, topic)  # reachable, or one clear line
    spec = TopicSpec(name=topic, partitions=partitions)
    return ensure_topics(admin_config, [spec], timeout_s=CONNECT_TIMEOUT_S)[topic]


@dataclass(slots=True)
class Produced:
    """What ``produce`` handed to Kafka and what became of it."""

    sent: int = 0
    """Events given to the producer."""
    failed: int = 0
    """Events Kafka did not acknowledge (delivery error, or still queued at the flush bound)."""
    elapsed_s: float = 0.0
    expected: dict[str, int] = field(default_factory=dict)
    """``Event.expect`` → events sent."""
    interrupted: bool = False
    """Ctrl-C stopped the sending early."""

    @property
    def acknowledged(self) -> int:
        return self.sent - self.failed


_FLUSH_TIMEOUT_S = 120.0
"""The final wait for acknowledgements; what is still queued then counts as failed."""


def produce(
    config: Mapping[str, Any],
    topic: str,
    source: Iterator[Event],
    *,
    rate: float | None = None,
    duration_s: float | None = None,
    progress: Progress | None = None,
    total: int | None = None,
) -> Produced:
    """Send ``source`` to ``topic`` and wait for Kafka's acknowledgements: at most ``rate`` events
    a second, for at most ``duration_s`` (with both, at most their product). A KeyboardInterrupt
    stops the sending; what was sent is flushed and counted, and the result says it was
    interrupted."""
    result = Produced()

    def failed(error: KafkaError | None, _: Message) -> None:
        if error is not None:
            result.failed += 1

    # Only failures are reported: a million success callbacks would cost more than the sending.
    # Log level 3 (errors): a fresh broker's "coordinator load in progress" warnings are noise here.
    producer = Producer(
        {
            **config,
            **PRODUCER_TUNING,
            "delivery.report.only.error": True,
            "on_delivery": failed,
            "log_level": 3,
        }
    )
    expected = result.expected
    started = time.monotonic()
    stop_at = None if duration_s is None else started + duration_s
    limit = None if rate is None or duration_s is None else int(rate * duration_s)
    if limit is not None:
        total = limit if total is None else min(total, limit)
    # Events between two looks at the clock: 10 ms worth at a rate, else a thousand.
    chunk = 1000 if rate is None else max(1, min(1000, int(rate / 100)))

    def render() -> str:
        rate_now = result.sent / max(time.monotonic() - started, 1e-9)
        if total is None:
            return f"{topic}: {result.sent:,} events, {rate_now:,.0f}/s"
        done = result.sent / total
        bar = "#" * int(30 * done)
        return f"{topic} [{bar:<30}] {result.sent:,}/{total:,} ({done:.0%}), {rate_now:,.0f}/s"

    try:
        for event in source:
            if result.sent == limit:
                break
            while True:
                try:
                    producer.produce(topic, event.value, event.key)
                    break
                except BufferError:  # the local queue is full: let librdkafka send some
                    producer.poll(0.05)
            result.sent += 1
            expected[event.expect] = expected.get(event.expect, 0) + 1
            if result.sent % chunk:
                continue
            producer.poll(0)
            if rate is not None and (ahead := started + result.sent / rate - time.monotonic()) > 0:
                producer.poll(ahead)
            if stop_at is not None and time.monotonic() >= stop_at:
                break
            if progress is not None:
                progress.update(render)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        # Runs on Ctrl-C too: what was handed over is delivered and counted before we go.
        result.failed += producer.flush(_FLUSH_TIMEOUT_S)
        result.elapsed_s = time.monotonic() - started
        if progress is not None:
            progress.close()
    return result


def run(
    *,
    env: Mapping[str, str],
    bootstrap_servers: str | None,
    topic: str | None,
    partitions: int,
    count: int | None,
    rate: float | None,
    duration_s: float | None,
    mix: Mix,
) -> int:
    """``dcr-stream produce``; errors raise ``DcrStreamError`` (``ConfigError``) for the CLI."""
    config = kafka_config(env, bootstrap_servers)
    topic = topic or default_topic(env)
    ensure_topic(config, topic, partitions)
    result = produce(
        config,
        topic,
        events(mix, count),
        rate=rate,
        duration_s=duration_s,
        progress=Progress(),
        total=count,
    )
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(result.expected.items()))
    per_s = result.acknowledged / max(result.elapsed_s, 1e-9)
    print(
        f"{'interrupted: ' if result.interrupted else ''}produced {result.acknowledged:,} events "
        f"to {topic} in {result.elapsed_s:.1f} s ({per_s:,.0f}/s){': ' if kinds else ''}{kinds}"
    )
    if result.failed:
        print(
            f"dcr-stream produce: {result.failed:,} events were not acknowledged by Kafka",
            file=sys.stderr,
        )
        return 1
    return 130 if result.interrupted else 0


def default_topic(env: Mapping[str, str]) -> str:
    """The first of ``DCR_KAFKA_TOPICS`` (default ``call-intents``), as the service reads it."""
    topics: tuple[str, ...] = setting(env, "kafka_topics")
    return topics[0]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dcr-stream produce``."""
    parser = commands.add_parser(
        "produce",
        help="send synthetic call-intent events to a topic (load, demos, tests)",
        description=(
            "Send synthetic call-intent events to a Kafka topic: valid events from a few callers\n"
            "per account to unique receivers, keyed caller:receiver, with starts_at now and\n"
            "ends_at six hours on; a share of them broken in one of several ways (each gets its\n"
            "own rejection code) and a share marked high priority. The topic is created with\n"
            "--partitions if it does not exist. A progress bar goes to stderr on a terminal; a\n"
            "summary line to stdout at the end. Exit status: 0 all acknowledged by Kafka, 1 some\n"
            "not (or Kafka unreachable), 2 bad usage, 130 interrupted (what was sent is flushed)."
        ),
        epilog=(
            "examples:\n"
            "  dcr-stream produce --count 1000000\n"
            "  dcr-stream produce --topic call-intents --count 50000 --invalid-ratio 0.02 "
            "--accounts 4 --high-priority-ratio 0.1\n"
            "  dcr-stream produce --rate 2000 --duration 300 --bootstrap-servers kafka:9092\n"
            "  dcr-stream produce --count 10 --accounts 6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11 "
            "--label-id 0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a\n"
            "  DCR_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 dcr-stream produce --count 1000 --seed 7"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bootstrap_servers(parser)
    parser.add_argument(
        "--topic", help="where to send (default: the first of $DCR_KAFKA_TOPICS, else call-intents)"
    )
    parser.add_argument(
        "--partitions",
        type=at_least_one,
        default=4,
        metavar="N",
        help="partitions of the topic if it has to be created (default: 4)",
    )
    parser.add_argument("--count", type=at_least_one, metavar="N", help="events to send")
    parser.add_argument(
        "--rate",
        type=arg_type(parse_positive),
        metavar="R",
        help="events per second at most (default: no limit)",
    )
    parser.add_argument(
        "--duration",
        type=arg_type(parse_positive),
        metavar="S",
        help="stop after S seconds (with or without --count)",
    )
    parser.add_argument(
        "--invalid-ratio",
        type=arg_type(_ratio),
        default=0.0,
        metavar="F",
        help="share of invalid events, of 8 kinds in turn (default: 0)",
    )
    parser.add_argument(
        "--accounts",
        type=arg_type(_accounts),
        default=1,
        metavar="N|ID,...",
        help="N generated client account ids (the same every run), or these ids (default: 1)",
    )
    parser.add_argument(
        "--high-priority-ratio",
        type=arg_type(_ratio),
        default=0.0,
        metavar="F",
        help='share of events with "priority": "high" (default: 0)',
    )
    parser.add_argument(
        "--label-id",
        type=arg_type(parse_uuid),
        action="append",
        metavar="UUID",
        help=f"label id of the events, repeatable: drawn at random (default: {DEFAULT_LABEL_ID})",
    )
    parser.add_argument("--seed", type=int, help="seed of the random choices (default: random)")
    parser.set_defaults(handler=_handle)


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError(f"{text} is not between 0 and 1")
    return value


def _accounts(text: str) -> int | tuple[str, ...]:
    """``N`` (that many generated ids) or ``ID,ID,...``."""
    if text.strip().isdigit():
        return at_least_one(text)
    ids = tuple(parse_uuid(part) for part in text.split(",") if part.strip())
    if not ids:
        raise ValueError("give a number or account ids")
    return ids


def _handle(args: argparse.Namespace) -> int:
    if args.count is None and args.duration is None:
        print(
            "dcr-stream produce: give --count N, or --duration S (with --rate R)", file=sys.stderr
        )
        return EXIT_USAGE
    mix = Mix(
        accounts=account_ids(args.accounts) if isinstance(args.accounts, int) else args.accounts,
        label_ids=tuple(args.label_id or (DEFAULT_LABEL_ID,)),
        invalid_ratio=args.invalid_ratio,
        high_priority_ratio=args.high_priority_ratio,
        seed=args.seed,
    )
    return run(
        env=os.environ,
        bootstrap_servers=args.bootstrap_servers,
        topic=args.topic,
        partitions=args.partitions,
        count=args.count,
        rate=args.rate,
        duration_s=args.duration,
        mix=mix,
    )
