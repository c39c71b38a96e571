"""A Kafka producer for the loop whose writes can be awaited until Kafka acknowledged them.

The dead letters and the receipts both need it (docs/design.md#at-least-once): a record is
finished, and its offset committable, only once its dead letter (or, with reconciliation on, its
batch's receipt) is acknowledged by every in-sync replica. A daemon thread polls the producer, so
delivery callbacks fire without the event loop's help; each one resolves the future its ``send``
awaits through ``call_soon_threadsafe`` (``acked``). A write Kafka refuses is retried by its
caller's ``stream.retry.AckedWriter``.

The token slots' records (``stream.leases``) are written on a producer of ``make_producer``'s
too, awaited through ``acked`` as well, but polled by the slots' consumer thread: a slot's holder
flushes its writes there before the group may hand the slot on.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

__all__ = ["AckedProducer", "acked", "make_producer"]

_POLL_S = 0.1
"""The poll thread's wait: callbacks fire as soon as an event arrives; this only bounds how long
``close`` waits for the thread to notice it should stop."""

_QUEUE_FULL_WAIT_S = 0.05
"""How long ``send`` yields when librdkafka's local queue is full before it tries again."""

Headers = list[tuple[str, str | bytes | None]]


class AckedProducer:
    """Writes awaited until Kafka answered, on a producer of ``make_producer``'s."""

    def __init__(self, config: Mapping[str, Any], *, name: str) -> None:
        self._producer = make_producer(config)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name=f"dcr-{name}-poll", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        # The config may hold SASL passwords: never show it.
        return "AckedProducer()"

    @property
    def alive(self) -> bool:
        """Whether the poll thread runs, or was stopped by ``close``: a thread that ended otherwise
        leaves every ``send`` waiting for good (liveness: docs/operations.md#health)."""
        return self._thread.is_alive() or self._stop.is_set()

    def produce(
        self,
        topic: str,
        *,
        key: bytes,
        value: bytes,
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> None:
        """Queue a write without waiting; raises ``BufferError`` or ``KafkaException`` as
        librdkafka does."""
        self._producer.produce(topic, key=key, value=value, on_delivery=on_delivery)

    async def send(
        self, topic: str, *, key: bytes | None, value: bytes | None, headers: Headers | None = None
    ) -> KafkaError | None:
        """Write one message; return once Kafka answered: None when it acknowledged the write,
        else its error. Waits while the local queue is full; raises ``KafkaException`` when
        librdkafka refuses the message outright."""
        done, delivered = acked(asyncio.get_running_loop())
        while True:
            try:
                self._producer.produce(
                    topic, key=key, value=value, headers=headers, on_delivery=delivered
                )
                break
            except BufferError:
                await asyncio.sleep(_QUEUE_FULL_WAIT_S)
        return await done

    def close(self, timeout_s: float) -> int:
        """Flush up to ``timeout_s``, fail whatever is left (its ``send`` returns the error), stop
        polling; return how many writes were left unacknowledged."""
        left: int = self._producer.flush(timeout_s)
        if left:
            self._producer.purge()
            # Serve the purge's delivery reports so no ``send`` waits forever.
            self._producer.flush(0)
        self._stop.set()
        self._thread.join()
        return left

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(_POLL_S)


def make_producer(config: Mapping[str, Any]) -> Producer:
    """A producer with ``acks=all`` and idempotence, whatever the pass-through says: every write
    the service waits for is one a commit or a slot's holder relies on."""
    return Producer({**config, "acks": "all", "enable.idempotence": True})


def acked(
    loop: asyncio.AbstractEventLoop,
) -> tuple[asyncio.Future[KafkaError | None], Callable[[KafkaError | None, Message], None]]:
    """A future on ``loop`` and the delivery callback that resolves it with Kafka's answer (None:
    acknowledged), whichever thread polls the producer: ``send``'s, and ``stream.leases``' slot
    records, whose producer the slots' consumer thread polls."""
    done: asyncio.Future[KafkaError | None] = loop.create_future()

    def delivered(error: KafkaError | None, _: Message) -> None:
        # Runs on the polling thread. It must not raise: that would end the thread. The loop may
        # already be closed if its owner gave up on the write; then nobody is waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, done, error)

    return done, delivered


def _settle(future: asyncio.Future[KafkaError | None], error: KafkaError | None) -> None:
    # A cancelled ``send`` leaves its future done; the write itself still happened or failed.
    if not future.done():
        future.set_result(error)
