"""The Kafka consumer, owned by one thread (docs/design.md#consumer).

confluent-kafka's consumer is a blocking client; rather than share it between threads we give it
one owner. The thread polls in short slices (up to 500 messages; when none wait, at most 0.1 s for
the next one), hands each slice to the asyncio loop in arrival order (``call_soon_threadsafe``), and
between slices runs the commands the loop sends it (commit, stop fetching). Rebalance callbacks run
on this thread inside ``poll``/``consume``; a revoke asks the loop for the partitions' final
positions (bounded) and commits them before the partitions go.

Backpressure lives here too, since only this thread may pause: when the records consumed and not yet
finished reach their bound it pauses the assigned partitions, keeps polling (so
``max.poll.interval.ms`` never expires and the group keeps us), and resumes below half. The
high-priority topics' partitions are counted apart, against a share of the bound reserved for
them, so a backlog of normal records never stops urgent ones from being read
(docs/design.md#backpressure).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from stream.offsets import TopicPartitionKey

__all__ = ["ConsumerThread"]

T = TypeVar("T")
_log = logging.getLogger("stream.consumer")

CONSUME_BATCH = 500
"""Messages per consume call: a full API batch, and far below what the loop handles per slice."""

AHEAD = 2 * CONSUME_BATCH
"""Messages handed to the loop and not yet taken by it, beyond which the thread waits (at most a
slice) before it polls again: the loop always has the next slice queued, and what it cannot take
yet stays in librdkafka's prefetch queue (bounded by ``queued.max.messages.kbytes``) rather than in
Python objects, so a fast topic no longer runs into the pause/resume bound just because the loop
is slower than the client."""

POLL_TIMEOUT_S = 0.1
"""Slice length: commands wait at most this long. Polls every 0.1 s keep us far inside
``max.poll.interval.ms`` (default 300 s) even while paused or draining."""

LAG_INTERVAL_S = 5.0
"""How often the consumer lag gauge is refreshed (from cached watermarks: no broker round trip)."""

WAKE_TIMEOUT_S = 0.05
"""The longest a resume waits for the lookup that wakes the fetchers (see ``_wake_fetchers``)."""

HIGH_SHARE = 5
"""With high-priority topics, a fifth of ``max_buffered`` is reserved for their records and the rest
bounds the others: the total stays within ``max_buffered`` (docs/design.md#backpressure)."""

REVOKE_WAIT_S = 10.0
"""How long a revoke in a running service waits for the revoked partitions' records to finish before
committing what is done: the rebalance waits for it, so it stays far below ``max.poll.interval.ms``
(300 s) and ``session.timeout.ms`` (45 s). A revoke during shutdown does not wait at all: the
shutdown budget already drained (``stream.app.ShutdownBudget``)."""


class ConsumerThread:
    """Owns the ``Consumer``; talks to the asyncio side only through the callables it is given."""

    def __init__(
        self,
        config: dict[str, Any],
        topics: Sequence[str],
        *,
        loop: asyncio.AbstractEventLoop,
        on_messages: Callable[[list[Message]], None],
        on_assign: Callable[[list[TopicPartitionKey]], None],
        on_revoke: Callable[[list[TopicPartitionKey]], Awaitable[dict[TopicPartitionKey, int]]],
        on_lost: Callable[[list[TopicPartitionKey]], None],
        finished: Callable[[], int],
        max_buffered: int,
        high_topics: frozenset[str] = frozenset(),
        finished_high: Callable[[], int] = lambda: 0,
    ) -> None:
        """``finished``: records finished, of every topic; ``finished_high``: of those, the records
        of ``high_topics``."""
        self._consumer = Consumer(config)
        self._topics = list(topics)
        self._loop = loop
        self._on_messages = on_messages
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self._finished = finished
        self._finished_high = finished_high
        self._high_topics = high_topics
        high_bound = max(1, max_buffered // HIGH_SHARE) if high_topics else 0
        self._bounds = {False: max(1, max_buffered - high_bound), True: high_bound}
        """Per class (high-priority topic or not): buffered records at which it pauses."""
        self._class_paused = {False: False, True: False}
        self._commands: queue.SimpleQueue[
            tuple[Callable[[], Any], concurrent.futures.Future[Any]]
        ] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._draining = False
        self._paused: set[TopicPartitionKey] = set()
        self._thread = threading.Thread(target=self._run, name="kafka-consumer", daemon=True)
        self.done: concurrent.futures.Future[None] = concurrent.futures.Future()
        """Resolves when the thread has closed the consumer (or failed)."""
        self.consumed = 0
        """Records handed to the loop since start; written by this thread only."""
        self.consumed_high = 0
        """Of those, the records of high-priority topics."""
        self._taken = 0
        """Records the loop has taken from the hand-over; written by the loop only."""
        self._room = threading.Event()
        """Set by the loop when the hand-over is down to ``AHEAD``."""
        self.last_poll = time.monotonic()
        """When ``consume`` last returned: the liveness signal."""
        self.waiting_on_broker = False
        """True while a synchronous commit waits for the coordinator: not a stall of ours."""
        self.assignment: set[TopicPartitionKey] = set()
        self.lag: dict[TopicPartitionKey, int] = {}
        """Per assigned partition: end offset minus position, refreshed every LAG_INTERVAL_S."""
        self._lag_at = 0.0

    @property
    def paused_partitions(self) -> set[TopicPartitionKey]:
        return self._paused

    def start(self) -> None:
        self._thread.start()

    # -- called from the loop ---------------------------------------------------------------

    async def commit(self, positions: dict[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
        """Commit on the consumer's thread; return the positions Kafka accepted."""
        return await self._call(lambda: self._commit(positions))

    async def stop_fetching(self) -> None:
        """Pause everything for good (shutdown); polling continues so the group keeps us."""
        await self._call(self._drain)

    async def close(self) -> None:
        """Close the consumer and end the thread (revoke callbacks still run and commit). A static
        member does not leave the group: its partitions move when its session ends
        (docs/design.md#crash-recovery)."""
        self._stop.set()
        await asyncio.wrap_future(self.done)

    async def _call(self, fn: Callable[[], T]) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._commands.put((fn, future))
        return await asyncio.wrap_future(future)

    # -- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._consumer.subscribe(
                self._topics,
                on_assign=self._assigned,
                on_revoke=self._revoked,
                on_lost=self._lost,
            )
            while not self._stop.is_set():
                self._run_commands()
                self._wait_for_room()
                messages = self._poll()
                self.last_poll = time.monotonic()
                if messages:
                    self._hand_over(messages)
                self._apply_backpressure()
                if self.last_poll - self._lag_at >= LAG_INTERVAL_S:
                    self._measure_lag()
            self._run_commands()
            self._consumer.close()
        except BaseException as exc:  # any failure must reach the loop, not die with the thread
            _log.exception("the consumer thread failed")
            self._fail_commands(exc)
            self.done.set_exception(exc)
            return
        self._fail_commands(RuntimeError("the consumer is closed"))
        self.done.set_result(None)

    def _poll(self) -> list[Message]:
        """What has arrived, or else the first message within the slice.

        ``consume(n, timeout)`` waits for ``n`` messages or the whole timeout, so a trickle would
        wait up to a slice in the client before it even reaches its batch; ``poll`` returns with the
        first message, and ``consume(n, 0)`` takes whatever is already fetched without waiting.
        """
        messages = self._consumer.consume(CONSUME_BATCH, 0)
        if messages:
            return messages
        first = self._consumer.poll(POLL_TIMEOUT_S)
        if first is None:
            return []
        return [first, *self._consumer.consume(CONSUME_BATCH - 1, 0)]

    def _hand_over(self, messages: list[Message]) -> None:
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.fatal():
                raise KafkaException(error)
            elif error.code() != KafkaError._PARTITION_EOF:
                _log.warning("consumer: %s", error)
        if good:
            self.consumed += len(good)
            if self._high_topics:
                high = self._high_topics
                self.consumed_high += sum(1 for m in good if m.topic() in high)
            self._loop.call_soon_threadsafe(self._take, good)

    def _wait_for_room(self) -> None:
        if self.consumed - self._taken > AHEAD:
            self._room.clear()
            if self.consumed - self._taken > AHEAD:  # the loop may have taken them meanwhile
                self._room.wait(POLL_TIMEOUT_S)

    def _take(self, messages: list[Message]) -> None:
        """On the loop: pass a slice on, and tell the thread when there is room for more."""
        self._taken += len(messages)
        if self.consumed - self._taken <= AHEAD:
            self._room.set()
        self._on_messages(messages)

    def _apply_backpressure(self) -> None:
        if self._draining:
            return
        finished_high = self._finished_high() if self._high_topics else 0
        finished = self._finished()
        high = self.consumed_high - finished_high
        self._regulate(False, self.consumed - self.consumed_high - (finished - finished_high))
        if self._high_topics:
            self._regulate(True, high)

    def _regulate(self, high: bool, buffered: int) -> None:
        """Pause one class of partitions (high-priority topics, or the others) at its bound, and
        resume it at half."""
        bound = self._bounds[high]
        mine = {tp for tp in self.assignment if (tp[0] in self._high_topics) == high}
        kind = "high-priority " if high else "normal " if self._high_topics else ""
        if not self._class_paused[high] and buffered >= bound:
            self._class_paused[high] = True
            self._pause(mine)
            _log.info("paused %d %spartitions: %d records buffered", len(mine), kind, buffered)
        elif self._class_paused[high] and buffered <= bound // 2:
            self._class_paused[high] = False
            paused = mine & self._paused
            _log.info("resumed %d %spartitions: %d records buffered", len(paused), kind, buffered)
            if paused:
                resumed = [TopicPartition(t, p) for t, p in paused]
                self._consumer.resume(resumed)
                self._wake_fetchers(resumed)
                self._paused -= paused
        elif self._class_paused[high] and mine - self._paused:
            self._pause(mine - self._paused)  # assigned while paused

    def _wake_fetchers(self, tps: list[TopicPartition]) -> None:
        """Make librdkafka fetch the resumed partitions now, not up to a second later.

        A resume is applied by librdkafka's main thread; the broker threads, which have nothing to
        fetch while everything is paused, sleep up to 1 s before they look again (librdkafka #1787,
        confluent-kafka-go #630): a second of nothing per pause/resume cycle. Any request queued on
        a broker thread wakes it; an offsets-for-times lookup of the resumed partitions queues one
        on each of their leaders. The answer is not needed, so the wait is short and a timeout is
        harmless.
        """
        with contextlib.suppress(KafkaException):
            self._consumer.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, 0) for tp in tps], timeout=WAKE_TIMEOUT_S
            )

    def _measure_lag(self) -> None:
        self._lag_at = self.last_poll
        lag = {}
        for tp in self._consumer.position([TopicPartition(t, p) for t, p in self.assignment]):
            _, end = self._consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and end >= 0:
                lag[(tp.topic, tp.partition)] = max(0, end - tp.offset)
        self.lag = lag

    def _pause(self, tps: set[TopicPartitionKey]) -> None:
        if tps:
            self._consumer.pause([TopicPartition(t, p) for t, p in tps])
            self._paused |= tps

    def _drain(self) -> None:
        self._draining = True
        self._pause(self.assignment - self._paused)

    def _run_commands(self) -> None:
        while True:
            try:
                fn, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as exc:
                    future.set_exception(exc)

    def _fail_commands(self, exc: BaseException) -> None:
        while True:
            try:
                _, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(exc)

    def _commit(self, positions: dict[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
        """Commit synchronously and check each partition's result; return what Kafka accepted."""
        ours = {tp: pos for tp, pos in positions.items() if tp in self.assignment}
        if not ours:
            return {}
        offsets = [TopicPartition(t, p, pos) for (t, p), pos in ours.items()]
        # While the group coordinator is unreachable a synchronous commit waits for it (up to about
        # a minute). That is the broker's trouble, not a stall of ours: liveness must not fail.
        self.waiting_on_broker = True
        try:
            results = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            _log.warning("commit failed: %s", exc.args[0])
            return {}
        finally:
            self.waiting_on_broker = False
        accepted = {}
        for result in results or []:
            if result.error is None:
                accepted[(result.topic, result.partition)] = result.offset
            else:
                _log.warning(
                    "commit of %s[%d] failed: %s", result.topic, result.partition, result.error
                )
        return accepted

    # -- rebalance callbacks (on this thread, inside consume) --------------------------------------

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        _log.info("assigned %s", _names(keys))
        # The loop learns of the partitions before any of their messages: both go through the
        # same FIFO (call_soon_threadsafe).
        self._loop.call_soon_threadsafe(self._on_assign, keys)
        consumer.incremental_assign(partitions)
        self.assignment.update(keys)
        paused = {
            k for k in keys if self._draining or self._class_paused[k[0] in self._high_topics]
        }
        self._pause(paused)
        if resumed := [tp for tp in partitions if (tp.topic, tp.partition) not in paused]:
            # librdkafka keeps a partition's pause across revoke (or loss) and a later assign,
            # while we forgot it with the partition: one paused then would never fetch again.
            consumer.resume(resumed)

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        _log.info("revoking %s", _names(keys))
        future = asyncio.run_coroutine_threadsafe(_awaitable(self._on_revoke(keys)), self._loop)
        try:
            positions = future.result(timeout=REVOKE_WAIT_S + 5)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            _log.warning("revoke: no final positions (%s); committing nothing", type(exc).__name__)
            positions = {}
        accepted = self._commit(positions)
        _log.info("revoked %s; committed %s", _names(keys), accepted)
        consumer.incremental_unassign(partitions)
        self.assignment.difference_update(keys)
        self._paused.difference_update(keys)

    def _lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        _log.warning("lost %s; their positions are not committed", _names(keys))
        self._loop.call_soon_threadsafe(self._on_lost, keys)
        consumer.incremental_unassign(partitions)
        self.assignment.difference_update(keys)
        self._paused.difference_update(keys)


async def _awaitable(value: Awaitable[T]) -> T:
    return await value


def _names(keys: list[TopicPartitionKey]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(keys)) or "nothing"
