"""Every replica sends on every token, each request claimed through Kafka (docs/design.md#scaling).

With several replicas, a token's 60 requests a minute are not any one replica's: whichever has
records waiting sends on it. Before a batch goes out on token ``i`` of account ``a``, its replica
*claims* the request: a record keyed ``c|a|i`` appended to the claims topic (one partition, the
broker's append time, ``LogAppendTime``). That time puts the claim in a *bucket* (``Decider``:
1.02 s at 60 a minute); the first claim of a token in a bucket, in the
partition's order, is granted and every later one refused. Every replica reads the partition and
decides each claim the same way, from the claims of its bucket alone: nothing is handed over when
replicas come and go, a replica killed after a claim has spent only that bucket, and a replica that
starts reads the last seconds and decides as the others do.

Why no token then exceeds its minute (``n`` requests, 60 at the API's limit): any ``n + 1``
granted requests of a token lie in ``n + 1`` buckets, so the last claim was written at least ``n``
buckets (61.2 s) after the first one's bucket began. A grant is used only until ``send_by_s``
(1.17 s) after its bucket began, so the two reach the API at least 60.03 s apart. That deadline is
told without comparing clocks: the claim's place in its bucket is the broker's time, and the claim
was written after ``claim`` began, by this process's clock. A claim written as its bucket opens
(the usual case: a token with work waits for its next bucket) may thus be used for more than a
second; one written late in its bucket, for 0.15 s. The price is the bucket's 2%: a token carries
at most 58.8 requests a minute.

The same reader follows the token topic (``stream.leases``) to its end, all partitions: a token
minted by the replica holding its slot is read, sealed, by the others, which send on it too. A
replica that needs more tokens than there are says so (``w|a``): the holders of the slots whose
token is missing mint one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)

from stream.errors import TopicError
from stream.leases import HELD_MARKER
from stream.producer import make_producer
from stream.topics import TopicSpec, ensure_topics

__all__ = ["Decider", "Sharing"]

_log = logging.getLogger("stream.sharing")

_BUCKET_MARGIN = 1.02
"""A bucket is 2% longer than the even spacing of a token's minute."""
_ARRIVAL_MARGIN_S = 0.03
"""What the requests' trips to the API may bunch them by: ``n + 1`` requests of a token reach it
at least 60 s and this apart."""
_READ_BACK_S = 10.0
"""How far back a starting reader reads the claims: far more than a bucket."""
_CLAIM_TIMEOUT_S = 2.0
"""A claim not read back within this (the broker is slow or away) counts as refused."""
_RETRY_S = 1.0
_WANT_EVERY_S = 1.0
"""A replica says an account wants more tokens at most this often."""
_RETENTION_MS = 600_000
_POLL_S = 0.05
"""The reader's longest wait for a record: how soon it sees a stop."""
_BATCH = 500
"""Records the reader takes at once beyond the first."""

_Call = tuple[Callable[..., None], tuple[Any, ...]]
"""What the reader thread has the loop do: a function and its arguments."""


class Decider:
    """Decides claims in the partition's order: the first of a token in each bucket is granted."""

    def __init__(self, requests_per_minute: float) -> None:
        n = max(1, math.floor(requests_per_minute))
        self.bucket_ms = math.ceil(_BUCKET_MARGIN * 60_000 / n)
        """A bucket, in whole milliseconds: ``n`` of them span 61.2 s at least."""
        self.send_by_s = n * self.bucket_ms / 1000 - 60.0 - _ARRIVAL_MARGIN_S
        """How long after its bucket began a grant may still be used (1.17 s)."""
        self._last: dict[bytes, int] = {}
        """Token (the claim's key) → the last bucket granted on it."""

    def decide(self, key: bytes, at_ms: int) -> tuple[bool, float]:
        """Whether the claim written at ``at_ms`` (the broker's time) is granted, and the seconds
        from then until the token's next bucket."""
        bucket = at_ms // self.bucket_ms
        granted = bucket > self._last.get(key, -1)
        if granted:
            self._last[key] = bucket
        return granted, ((bucket + 1) * self.bucket_ms - at_ms) / 1000

    def usable_s(self, next_s: float) -> float:
        """How long after its claim was written a grant may be used, ``next_s`` being what
        ``decide`` said: until ``send_by_s`` after its bucket began."""
        return self.send_by_s - (self.bucket_ms / 1000 - next_s)


Granted = Callable[[str, int, float], None]
"""(account, token, seconds until its next bucket): a request was granted on the token."""


class Sharing:
    """The claims and the shared view of the token slots, for one process (see the module)."""

    def __init__(
        self,
        consumer_config: Mapping[str, Any],
        producer_config: Mapping[str, Any],
        *,
        topic: str,
        slots: TopicSpec,
        requests_per_minute: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.topic = topic
        config = {k: v for k, v in consumer_config.items() if k != "group.instance.id"}
        self._consumer_config = {
            **config,
            "group.id": f"{topic}.reader",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
        }
        self._producer_config = {**producer_config, "linger.ms": 0}
        self._admin_config = producer_config
        self._slots = slots
        self._loop = loop
        self._decider = Decider(requests_per_minute)
        self.bucket_s = self._decider.bucket_ms / 1000
        self.send_by_s = self._decider.send_by_s
        self._create_time_said = False
        self._prefix = f"{uuid.uuid4().hex[:12]}|".encode()
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[tuple[bool, float]]] = {}
        self._records: dict[tuple[str, int], bytes] = {}
        """(account, slot) → what the slot remembers (``stream.leases``), as the topic says now."""
        self._wanted_at: dict[str, float] = {}
        self._on_want: Callable[[str], None] = lambda account: None
        self._on_grant: Granted = lambda account, token, next_s: None
        self._on_record: Callable[[str], None] = lambda account: None
        self.claims = 0
        self.granted = 0
        self.late = 0
        """Grants read back too late to be used."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Any = None

    def __repr__(self) -> str:
        return f"Sharing(topic={self.topic!r}, bucket_s={self.bucket_s:.3f})"

    def listen(
        self,
        *,
        want: Callable[[str], None],
        grant: Granted,
        record: Callable[[str], None],
    ) -> None:
        """Called on the loop: another replica wants tokens for an account; a request was granted
        on a token (any replica's); a slot's record of an account changed."""
        self._on_want, self._on_grant, self._on_record = want, grant, record

    def outcomes(self) -> dict[str, int]:
        """Claims since start by outcome (``dcr_token_claims_total``)."""
        granted, late = self.granted, self.late
        return {"granted": granted, "late": late, "refused": self.claims - granted - late}

    def record(self, account: str, slot: int) -> bytes | None:
        return self._records.get((account, slot))

    @property
    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive() or self._stop.is_set()

    async def start(self) -> None:
        self._producer = make_producer(self._producer_config)
        self._thread = threading.Thread(target=self._run, name="dcr-token-sharing", daemon=True)
        self._thread.start()

    async def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout_s)
        for future in self._pending.values():
            future.cancel()

    # -- the loop's side ------------------------------------------------------------------------

    async def claim(self, account: str, token: int) -> float:
        """Claim a request on ``token`` of ``account``: 0 if granted (send now), else how long to
        wait before claiming it again (its next bucket)."""
        loop = self._loop
        claim_id = next(self._ids)
        future: asyncio.Future[tuple[bool, float]] = loop.create_future()
        self._pending[claim_id] = future
        started = loop.time()
        self.claims += 1
        try:
            self._producer.produce(
                self.topic,
                key=f"c|{account}|{token}".encode(),
                value=self._prefix + str(claim_id).encode(),
            )
            granted, next_s = await asyncio.wait_for(future, _CLAIM_TIMEOUT_S)
        except (BufferError, KafkaException, TimeoutError) as exc:
            self._pending.pop(claim_id, None)
            _log.warning("token sharing: a claim on account %s failed: %r", account, exc)
            return _RETRY_S
        # ``started`` was before the claim was written: the bucket began ``usable_s`` before the
        # deadline at the latest, by this clock.
        elapsed = loop.time() - started
        if granted and elapsed <= self._decider.usable_s(next_s):
            self.granted += 1
            return 0.0
        self.late += granted
        # The next bucket starts ``next_s`` after the claim was written, which was at most
        # ``elapsed`` ago: aim halfway, a refused early claim costs what a late one does.
        return max(0.001, next_s - elapsed / 2)

    def want(self, account: str) -> None:
        """Say that ``account`` waits for more tokens than it can send on (at most once a
        second): the holders of its slots without a token mint one."""
        now = time.monotonic()
        if self._producer is None or now - self._wanted_at.get(account, -math.inf) < _WANT_EVERY_S:
            return
        self._wanted_at[account] = now
        with contextlib.suppress(BufferError, KafkaException):
            self._producer.produce(self.topic, key=f"w|{account}".encode(), value=self._prefix)

    def _decided(self, claim_id: int, granted: bool, next_s: float) -> None:
        future = self._pending.pop(claim_id, None)
        if future is not None and not future.done():
            future.set_result((granted, next_s))

    # -- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        spec = TopicSpec(
            name=self.topic,
            partitions=1,
            config={
                "cleanup.policy": "delete",
                "retention.ms": str(_RETENTION_MS),
                "message.timestamp.type": "LogAppendTime",
            },
        )
        while not self._stop.is_set():
            try:
                counts = ensure_topics(self._admin_config, [spec, self._slots])
                break
            except (KafkaException, TopicError) as exc:
                _log.error("token sharing: cannot make sure the topics exist: %s", exc)
                self._stop.wait(5.0)
        else:
            return
        consumer = Consumer(self._consumer_config)
        try:
            slots = [
                TopicPartition(self._slots.name, p, OFFSET_BEGINNING)
                for p in range(counts[self._slots.name])
            ]
            start = self._start(consumer)
            if start is None:
                return  # stopped before it started
            consumer.assign([start, *slots])
            while not self._stop.is_set():
                # poll returns with the first record there (consume waits out its timeout unless
                # it fills up); consume(…, 0) then takes what else is there, without waiting.
                first = consumer.poll(_POLL_S)
                self._producer.poll(0)
                if first is None:
                    continue
                calls: list[_Call] = []
                for message in (first, *consumer.consume(_BATCH, 0)):
                    try:
                        self._take(message, calls)
                    except Exception:  # one bad record must not stop every claim
                        _log.exception("token sharing: a record of %s", message.topic())
                if calls:  # one wake-up of the loop for them all
                    self._loop.call_soon_threadsafe(_call_all, calls)
        except Exception:
            _log.exception("token sharing: the reader failed; this replica sends on no claim")
        finally:
            with contextlib.suppress(Exception):
                consumer.close()
            with contextlib.suppress(Exception):
                self._producer.flush(1.0)

    def _start(self, consumer: Consumer) -> TopicPartition | None:
        """Where this reader starts in the claims: ``_READ_BACK_S`` ago, asked until the broker can
        say (a topic just created has no leader for a moment)."""
        while True:
            since = TopicPartition(self.topic, 0, int((time.time() - _READ_BACK_S) * 1000))
            try:
                # The end first: a claim written after it is read whatever the answer below.
                _, end = consumer.get_watermark_offsets(TopicPartition(self.topic, 0), timeout=10)
                [start] = consumer.offsets_for_times([since], timeout=10)
            except KafkaException as exc:
                if self._stop.is_set():
                    return None
                _log.warning("token sharing: where to start reading the claims? %s", exc)
                self._stop.wait(0.5)
                continue
            start.offset = start.offset if start.offset >= 0 else end
            return start

    def _take(self, message: Message, calls: list[_Call]) -> None:
        """Decide ``message`` (a claim) or note it; what the loop must learn goes in ``calls``."""
        if message.error() is not None:
            return
        key, value = message.key() or b"", message.value() or b""
        call = calls.append
        if message.topic() != self.topic:
            if key and key != HELD_MARKER:
                account = key.decode()
                self._records[(account, message.partition() or 0)] = value
                call((self._on_record, (account,)))
            return
        if key.startswith(b"c|"):
            kind, at_ms = message.timestamp()
            if kind != TIMESTAMP_LOG_APPEND_TIME and not self._create_time_said:
                self._create_time_said = True
                _log.error(
                    "token sharing: %s is not message.timestamp.type=LogAppendTime; claims are "
                    "decided by the replicas' clocks, which must then agree (docs/operations.md)",
                    self.topic,
                )
            granted, next_s = self._decider.decide(key, at_ms)
            if value.startswith(self._prefix):
                call((self._decided, (int(value[len(self._prefix) :]), granted, next_s)))
            if granted:
                _, account, token = key.decode().split("|")
                call((self._on_grant, (account, int(token), next_s)))
        elif key.startswith(b"w|") and not value.startswith(self._prefix):
            call((self._on_want, (key[2:].decode(),)))


def _call_all(calls: list[_Call]) -> None:
    """On the loop: what the reader thread read, in its order (one failing call stops no other)."""
    for fn, args in calls:
        try:
            fn(*args)
        except Exception:
            _log.exception("token sharing: telling the loop what was read")
