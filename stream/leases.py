"""Which token slots this process holds, and what each slot remembers (docs/design.md#scaling).

An account's token pool is cut into *slots* (``DCR_TOKEN_POOL_SIZE``, default 10). A slot is held
by one process at a time: only its holder mints its token and sends on it, so no token is used by
two replicas and its 60 requests a minute are never exceeded, however many replicas run. What a slot
remembers (its last mints, its token, sealed) outlives the process that wrote it, so a restarted or
new holder reuses a live token instead of minting.

``LocalLeases`` holds every slot and remembers in memory: one process, nothing shared (tests).
``KafkaLeases`` shares the slots between replicas and restarts through a compacted topic.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from stream.errors import TopicError
from stream.producer import acked, make_producer
from stream.topics import TopicSpec, ensure_topics

__all__ = ["HELD_MARKER", "KafkaLeases", "Leases", "LocalLeases", "read_slots"]

_log = logging.getLogger("stream.leases")

_RETRY_S = 5.0
"""How long to wait before asking the broker about the topic again."""

_LET_GO_WAIT_S = 5.0
"""How long a revoke waits for the loop to stop using the slots. The loop answers in microseconds
unless it is blocked; the rebalance waits meanwhile, far inside ``session.timeout.ms``."""


_SETTLE_S = 30.0
"""The longest ``settled`` waits for a first assignment."""

HELD_MARKER = b"dcr.slot.held"
"""The key of the record written to a slot's empty partition by its first holder (``fresh``); no
account is named so."""


Release = Callable[[frozenset[int]], list[tuple[str, int, bytes]]]
"""Slots let go → (account, slot, record) to write before the next holder gets them."""


class Leases(Protocol):
    """The slots of every account's pool, as this process holds them."""

    @property
    def slots(self) -> int:
        """How many slots a pool has (the same for every account)."""
        ...

    def owned(self) -> frozenset[int]:
        """The slots this process holds now."""
        ...

    @property
    def settled(self) -> bool:
        """Whether the slots were handed out once since start (this process may hold none)."""
        ...

    def watch(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop) whenever the held slots change."""
        ...

    def on_release(self, release: Release) -> None:
        """Before slots are let go, ask ``release`` (on the event loop) for records to write to
        them: their holder's handover to the next one."""
        ...

    def record(self, account: str, slot: int) -> bytes | None:
        """What ``slot`` of ``account``'s pool remembers (the last value stored), if anything."""
        ...

    def fresh(self, slot: int) -> bool:
        """Whether no process held ``slot`` before this one: nobody can have sent on its tokens
        lately, so they need no worst case assumed (docs/design.md#scaling)."""
        ...

    def generation(self, slot: int) -> int:
        """A number that changes each time ``slot`` is taken or let go here: a write started under
        an older one is refused by ``store`` (docs/design.md#scaling)."""
        ...

    async def store(self, account: str, slot: int, value: bytes, *, generation: int) -> bool:
        """Remember ``value`` for ``slot`` of ``account``'s pool; returns once it is kept. False,
        and nothing written, if this process no longer holds ``slot`` under ``generation``; False
        too if it let the slot go while the write was on its way (the write is then before the next
        holder's reading: ``_let_go`` waits for it)."""
        ...


class LocalLeases:
    """Every slot held by this process, remembered in memory."""

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._records: dict[tuple[str, int], bytes] = {}

    def __repr__(self) -> str:
        return f"LocalLeases(slots={self._slots})"

    @property
    def slots(self) -> int:
        return self._slots

    def owned(self) -> frozenset[int]:
        return frozenset(range(self._slots))

    @property
    def settled(self) -> bool:
        return True

    def watch(self, listener: Callable[[], None]) -> None:
        """The slots never change."""

    def on_release(self, release: Release) -> None:
        """No slot is ever let go."""

    def record(self, account: str, slot: int) -> bytes | None:
        return self._records.get((account, slot))

    def fresh(self, slot: int) -> bool:
        """Only this process ever holds the slots."""
        return True

    def generation(self, slot: int) -> int:
        """The slots never change hands."""
        return 0

    async def store(self, account: str, slot: int, value: bytes, *, generation: int) -> bool:
        self._records[(account, slot)] = value
        return True


def read_slots(
    consumer_config: Mapping[str, Any], topic: str, timeout_s: float = 15.0
) -> dict[tuple[str, int], bytes]:
    """What every slot of the pools remembers now, (account, slot) → last record, read without
    joining the slot group (no rebalance of the replicas): for a tool such as ``dcr-stream status``,
    which may only look. Empty if the topic does not exist or is not read to its end in time."""
    consumer = Consumer(
        {
            **consumer_config,
            "group.id": f"{topic}.reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    records: dict[tuple[str, int], bytes] = {}
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return {}
        left = set(metadata.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in left])
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            for message in consumer.consume(100, 0.2):
                partition, key, error = message.partition(), message.key(), message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        left.discard(partition)
                elif key is not None and partition is not None:
                    records[(key.decode(), partition)] = message.value() or b""
        return {} if left else records
    finally:
        consumer.close()


class KafkaLeases:
    """Slots shared by the replicas through a compacted topic (``DCR_TOKEN_TOPIC``).

    The topic has one partition per slot and is consumed in a group of its own
    (``<DCR_KAFKA_GROUP_ID>.tokens``), so Kafka's group protocol leases each slot to exactly one
    member, rebalances them as replicas come and go (cooperative-sticky: a slot moves only after its
    holder let go of it), and hands a dead replica's slots on after ``session.timeout.ms`` (or at
    once to its restart under the same ``group.instance.id``, docs/design.md#crash-recovery). A
    slot's partition holds, per account (the key), what the slot remembers; compaction keeps the
    last.

    One thread owns the consumer. A newly assigned slot is read from its start to its end before
    it counts as held, so its holder knows the slot's mints and token before it mints or sends. A
    revoke lets go on the loop (no new request on the slot's tokens) before the callback returns.
    Records are written by the slot's holder only, acknowledged by every in-sync replica.
    """

    def __init__(
        self,
        consumer_config: Mapping[str, Any],
        producer_config: Mapping[str, Any],
        *,
        topic: str,
        group_id: str,
        slots: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.topic = topic
        self._consumer_config = {
            **consumer_config,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.partition.eof": True,
        }
        self._producer_config = producer_config
        self._admin_config = producer_config
        self._slots = slots
        self._loop = loop
        self._owned: frozenset[int] = frozenset()
        """The slots held, as the loop sees them (``owned``)."""
        self._settled = False
        """A first assignment came and its slots were read in (``settled``)."""
        self._started_at: float | None = None
        self._held: set[int] = set()
        """The slots held, as the consumer's thread sees them; published to the loop."""
        self._loading: set[int] = set()
        self._fresh: set[int] = set()
        """Slots whose partition was empty when this process got them (``fresh``)."""
        self._records: dict[tuple[str, int], bytes] = {}
        self._generations: dict[int, int] = {}
        """Per slot, bumped on the loop each time it is taken or let go (``generation``)."""
        self._listeners: list[Callable[[], None]] = []
        self._release: Release | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._producer: Producer | None = None

    def __repr__(self) -> str:
        return f"KafkaLeases(topic={self.topic!r}, slots={self._slots})"

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def alive(self) -> bool:
        """Whether the slots' thread runs, or was stopped by ``close`` (or not started yet): a
        thread that ended otherwise holds no slot until a restart (docs/operations.md#health)."""
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    def owned(self) -> frozenset[int]:
        return self._owned

    @property
    def settled(self) -> bool:
        # A member left without a slot may never be told so: the start-up's wait bounds it.
        started = self._started_at
        return self._settled or (started is not None and time.monotonic() - started > _SETTLE_S)

    def watch(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def on_release(self, release: Release) -> None:
        self._release = release

    def record(self, account: str, slot: int) -> bytes | None:
        return self._records.get((account, slot))

    def fresh(self, slot: int) -> bool:
        return slot in self._fresh

    def generation(self, slot: int) -> int:
        return self._generations.get(slot, 0)

    async def store(self, account: str, slot: int, value: bytes, *, generation: int) -> bool:
        """Write and wait for the acknowledgement (``acks=all``); a failure raises ``KafkaError``
        wrapped in ``KafkaException``, and the mint that wanted it does not happen.

        Only the slot's holder writes, under the generation it started with: a mint answered after
        its slot moved on cannot overwrite the new holder's record (docs/design.md#scaling)."""
        assert self._producer is not None, "start() first"
        if slot not in self._owned or self.generation(slot) != generation:
            _log.info("token slot %d: not written, the slot is no longer held here", slot)
            return False
        done, delivered = acked(self._loop)
        self._producer.produce(
            self.topic, key=account.encode(), value=value, partition=slot, on_delivery=delivered
        )
        # Mints are rare: wait for this write at once rather than for the next poll.
        await asyncio.to_thread(self._producer.flush, 30)
        error = await done
        if error is not None:
            raise KafkaException(error)
        if self.generation(slot) != generation:
            return False
        self._records[(account, slot)] = value
        return True

    # -- life -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the thread: it makes sure the topic exists with a partition per slot (trying
        again while the broker cannot say), then joins the group. No slot is held meanwhile."""
        self._producer = make_producer(self._producer_config)
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="dcr-token-slots", daemon=True)
        self._thread.start()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Let the slots go (handovers written) and flush the writes. A dynamic member leaves the
        group and its slots move at once; a static one (``DCR_KAFKA_INSTANCE_ID``) stays a member
        until its session ends, or until it is restarted under the same id
        (docs/design.md#crash-recovery)."""
        if self._stop.is_set():
            return  # closed already (the shutdown closes it, and the run's end again)
        self._stop.set()
        if self._thread is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.wrap_future(self._done), timeout_s)
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, timeout_s)

    @property
    def spec(self) -> TopicSpec:
        """The topic: compacted, a partition per slot (more than the pool size, if someone made it
        so: the slots are its partitions); created or grown only when needed (``stream.topics``)."""
        return TopicSpec(
            name=self.topic,
            partitions=self._slots,
            config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
            grow=True,
        )

    def _ensure_topic(self) -> int:
        return ensure_topics(self._admin_config, [self.spec])[self.topic]

    # -- the consumer's thread ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._slots = self._ensure_topic()
                break
            except (KafkaException, TopicError) as exc:
                _log.error("token slots: cannot make sure %s exists: %s", self.topic, exc)
                self._stop.wait(_RETRY_S)
        if self._stop.is_set():
            self._done.set_result(None)
            return
        consumer = Consumer(dict(self._consumer_config))
        try:
            consumer.subscribe(
                [self.topic],
                on_assign=self._assigned,
                on_revoke=self._revoked,
                on_lost=self._revoked,
            )
            while not self._stop.is_set():
                for message in consumer.consume(100, 0.2):
                    self._take(message)
                if self._producer is not None:
                    self._producer.poll(0)
        except Exception:
            _log.exception("token slots: the consumer failed; this replica holds no slot")
            self._let_go(self._held | self._loading)
        finally:
            with contextlib.suppress(Exception):
                consumer.close()  # revokes through _revoked; a dynamic member leaves the group
            self._done.set_result(None)

    def _take(self, message: Message) -> None:
        partition = message.partition()
        assert partition is not None
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF and partition in self._loading:
                self._loading.discard(partition)
                if message.offset() == 0 and self._mark_held(partition):
                    self._fresh.add(partition)
                self._held.add(partition)
                self._settled = self._settled or not self._loading
                self._publish(frozenset(self._held))
            elif error.code() != KafkaError._PARTITION_EOF:
                _log.warning("token slots: %s", error)
            return
        key = message.key()
        if key is not None and partition in self._loading:
            # Only while a slot is read in: once held, its records are the ones this process wrote.
            self._records[(key.decode(), partition)] = message.value() or b""

    def _mark_held(self, partition: int) -> bool:
        """A slot's partition is empty: nobody held it before. Write a marker (acknowledged), so
        that whoever holds it next knows it was held; False if the write failed (then this
        process assumes the worst, as for any slot taken over)."""
        assert self._producer is not None
        acked: list[KafkaError | None] = []
        self._producer.produce(
            self.topic,
            key=HELD_MARKER,
            value=b"",
            partition=partition,
            on_delivery=lambda error, _: acked.append(error),
        )
        self._producer.flush(_LET_GO_WAIT_S)
        return acked == [None]

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tp.offset = OFFSET_BEGINNING
            self._loading.add(tp.partition)
            self._fresh.discard(tp.partition)
        consumer.incremental_assign(partitions)
        self._settled = self._settled or not self._loading  # none to read in (none assigned)
        _log.info("token slots assigned: %s", sorted(tp.partition for tp in partitions))

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        self._loading -= gone
        self._let_go(gone)
        consumer.incremental_unassign(partitions)
        _log.info("token slots revoked: %s", sorted(gone))

    def _let_go(self, gone: set[int] | frozenset[int]) -> None:
        """Stop using the slots on the loop, and wait (bounded) until it has: only then may the
        group give them to another replica."""
        self._held -= gone
        handover: list[tuple[str, int, bytes]] = []
        done = self._publish(frozenset(self._held), frozenset(gone), handover)
        answered = done.wait(_LET_GO_WAIT_S)
        # Forgotten only now: the handover is made from what the slots remember.
        for account, slot in list(self._records):
            if slot in gone:
                del self._records[(account, slot)]
        if self._producer is None:
            return
        if answered:
            for account, slot, value in handover:
                self._producer.produce(
                    self.topic, key=account.encode(), value=value, partition=slot
                )
        # Writes started before the loop let go (a mint's) land before the next holder reads in.
        left = self._producer.flush(_LET_GO_WAIT_S)
        if handover:
            _log.info(
                "token slots %s handed over (%d records, %d not acknowledged)",
                sorted(gone),
                len(handover),
                left,
            )

    def _publish(
        self,
        owned: frozenset[int],
        gone: frozenset[int] = frozenset(),
        handover: list[tuple[str, int, bytes]] | None = None,
    ) -> threading.Event:
        """Apply ``owned`` on the loop; for slots ``gone``, collect the handover records first."""
        done = threading.Event()

        def apply() -> None:
            if gone and self._release is not None and handover is not None:
                handover.extend(self._release(gone))
            for slot in owned ^ self._owned:
                self._generations[slot] = self.generation(slot) + 1
            self._owned = owned
            for listener in self._listeners:
                listener()
            done.set()

        if self._loop.is_closed():
            self._owned = owned
            done.set()
        else:
            self._loop.call_soon_threadsafe(apply)
        return done
