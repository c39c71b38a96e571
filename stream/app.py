"""``dcr-stream run``: the pipeline, top to bottom.

    consume (ConsumerThread) → decode + validate (validation) → batch + send under quota (Delivery)
    → finished: accepted by the API, or dead-lettered and acknowledged (DeadLetterProducer)
    → commit the finished prefix of each partition (OffsetTracker)

Everything but the consumer's own thread runs on one asyncio loop, so the pipeline's state needs no
locks. The counters that the consumer thread reads for backpressure (``finished``) are written here
only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web
from confluent_kafka import Message
from msgspec import Struct

from stream.api import ApiClient, Response, make_session
from stream.batching import Batch, Pending
from stream.config import Config
from stream.consumer import REVOKE_WAIT_S, ConsumerThread
from stream.delivery import Backoff, Delivery
from stream.dlq import DeadLetterProducer
from stream.errors import DeadLetterError
from stream.http import Health, http_app
from stream.metrics import Metrics, State
from stream.offsets import OffsetTracker, Ticket, TopicPartitionKey
from stream.receipts import Receipt, Receipts, offset_ranges
from stream.tokens import MintedTokens, StaticToken, TokenFile, TokenSource
from stream.validation import Rejection, Rules, validate

__all__ = ["Pipeline"]

_log = logging.getLogger("stream.app")
_librdkafka_log = logging.getLogger("librdkafka")


class Source(Struct, frozen=True, gc=False):
    """What the pipeline keeps with each record: its offset claim and the original message (DLQ).

    A ``gc=False`` struct, as ``Pending`` is: one per record, never tracked by the cyclic collector.
    """

    ticket: Ticket
    message: Message


_DLQ_LOG_EVERY_S = 5.0
"""Dead-letter write failures are logged at most this often (see ``_log_dlq_failure``)."""

_CLOSE_RESERVE_S = 3.0
"""Of the shutdown timeout, kept back for the final commit and leaving the group."""


class Pipeline:
    """One ``run`` of the service. Construct, then ``await run(stop)``; returns the exit status."""

    def __init__(
        self,
        config: Config,
        *,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.config = config
        self._wall_ms = wall_ms
        self._rules = Rules(
            default_account=config.client_account_id,
            allowed_labels=config.allowed_label_ids,
            max_message_bytes=config.max_message_bytes,
        )
        self._high_topics = config.kafka_high_priority_topics
        self._backoff = Backoff(
            base_s=config.retry_base_ms / 1000, cap_s=config.retry_cap_ms / 1000
        )
        self._rng = random.Random()
        self.tracker = OffsetTracker()
        self.metrics = Metrics()
        self.counts = self.metrics.counts
        self.finished = 0
        """Records delivered or dead-lettered since start; the consumer thread reads it."""
        self._progress = asyncio.Event()
        """Set whenever records finish; the bounded waits for draining listen to it."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._delivery: Delivery[Source] | None = None
        self._dlq: DeadLetterProducer | None = None
        self._receipts: Receipts | None = None
        self._consumer: ConsumerThread | None = None
        self._tokens_source: TokenSource | None = None
        self.last_commit_s = 0.0
        self._dlq_logged_at = -_DLQ_LOG_EVERY_S
        self.assigned = asyncio.Event()
        """Set once the group gave us partitions (readiness)."""
        self.http_port: int | None = None
        """The port ``/metrics`` and the probes listen on, once started."""

    # -- the run -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        config = self.config
        loop = asyncio.get_running_loop()
        session = make_session(timeout_s=config.api_timeout_s, ca_bundle=config.api_ca_bundle)
        kafka_client: dict[str, Any] = {**config.client_config(), "logger": _librdkafka_log}
        self._dlq = DeadLetterProducer(kafka_client, config.dlq_topic)
        if config.receipts_topic is not None:
            self._receipts = Receipts(kafka_client, config.receipts_topic)
        self._tokens_source = self._tokens(session)
        self._delivery = Delivery(
            client=ApiClient(
                session,
                base_url=config.api_base_url,
                version=config.api_version,
                tokens=self._tokens_source,
            ),
            outcomes=self,
            version=config.api_version,
            max_records=config.batch_max_records,
            linger_s=config.batch_linger_ms / 1000,
            max_bytes=config.batch_max_bytes,
            rate_limit_rps=config.rate_limit_rps,
            backoff=self._backoff,
            wall_ms=self._wall_ms,
            rng=self._rng,
            metrics=self.metrics,
        )
        self._consumer = ConsumerThread(
            {**config.consumer_config(), "logger": _librdkafka_log},
            config.kafka_topics,
            loop=loop,
            on_messages=self._on_messages,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self.tracker.forget,
            finished=lambda: self.finished,
            max_buffered=config.max_buffered_records,
        )
        _log.info("starting: topics %s, group %s", config.kafka_topics, config.kafka_group_id)
        http = await self._serve_http(self._consumer)
        self._consumer.start()
        committer = loop.create_task(self._commit_every(config.commit_interval_ms / 1000))
        consumer_done = asyncio.wrap_future(self._consumer.done)
        stopped = loop.create_task(stop.wait())
        try:
            waits: list[asyncio.Future[Any]] = [stopped, consumer_done]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if consumer_done.done() and consumer_done.exception() is not None:
                # Already logged with its traceback by the thread; what is not committed is safe.
                _log.error("stopping: the Kafka consumer failed: %s", consumer_done.exception())
                return 1
            committer.cancel()
            return await self._shutdown()
        finally:
            for task in (committer, stopped, *self._tasks):
                task.cancel()
            await self._delivery.close()
            await session.close()
            self._dlq.close()
            if self._receipts is not None:
                self._receipts.close()
            await http.cleanup()

    async def _serve_http(self, consumer: ConsumerThread) -> web.AppRunner:
        self.metrics.watch(
            State(
                buffered=lambda: consumer.consumed - self.finished,
                open_records=lambda: self._delivery.open_records if self._delivery else 0,
                paused=lambda: len(consumer.paused_partitions),
                assigned=lambda: len(consumer.assignment),
                lag=lambda: consumer.lag,
                last_commit=lambda: self.last_commit_s,
                token_refreshes=lambda: getattr(self._tokens_source, "mint_count", 0),
                rates=lambda: self._delivery.rates() if self._delivery else {},
            )
        )
        health = Health(
            last_poll=lambda: (
                time.monotonic() if consumer.waiting_on_broker else consumer.last_poll
            ),
            consumer_alive=lambda: not consumer.done.done(),
            ready=self.assigned.is_set,
            stall_s=self.config.liveness_stall_s,
        )
        runner = web.AppRunner(http_app(self.metrics, health), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "0.0.0.0", self.config.http_port)
        await site.start()
        self.http_port = runner.addresses[0][1]
        _log.info("http: /metrics, /healthz, /readyz on port %d", self.http_port)
        return runner

    async def _shutdown(self) -> int:
        """SIGTERM/SIGINT (SPEC §5), in order:

        1. stop fetching: pause every partition (polling goes on, the group keeps us);
        2. send every open batch now;
        3. wait, up to the shutdown timeout less a reserve, until every record is finished;
        4. commit the finished prefix of every partition;
        5. close the consumer, which leaves the group (its revoke commits nothing new).

        Returns 0 when everything consumed was finished and committed, 1 otherwise.
        """
        assert self._consumer is not None
        assert self._delivery is not None
        loop = asyncio.get_running_loop()
        _log.info("shutting down: draining")
        deadline = loop.time() + max(0.0, self.config.shutdown_timeout_s - _CLOSE_RESERVE_S)
        await self._consumer.stop_fetching()
        self._delivery.flush_open()
        drained = await self._wait_finished(None, deadline)
        await self._commit()
        await self._consumer.close()
        left = self.tracker.unfinished()
        if drained:
            _log.info("shut down cleanly: every consumed record was finished and committed")
            return 0
        _log.error("shut down with %d records unfinished; they will be consumed again", left)
        return 1

    def _tokens(self, session: Any) -> TokenSource:
        config = self.config
        if config.api_token is not None:
            return StaticToken(config.api_token)
        if config.api_token_file is not None:
            return TokenFile(config.api_token_file)
        assert config.api_key_id is not None
        assert config.api_key is not None
        return MintedTokens(
            session, base_url=config.api_base_url, key_id=config.api_key_id, api_key=config.api_key
        )

    # -- consume → validate → submit ----------------------------------------------------------

    def _on_messages(self, messages: list[Message]) -> None:
        """One consumed slice, in order: the once-a-record path (see ``bench/``)."""
        assert self._delivery is not None
        now_ms = self._wall_ms()
        receive, rules, high_topics = self.tracker.receive, self._rules, self._high_topics
        self.counts.consumed += len(messages)
        valid: list[Pending[Source]] = []
        for message in messages:
            topic = message.topic()
            assert topic is not None
            ticket = receive(topic, message.partition() or 0, message.offset() or 0)
            if ticket is None:  # revoked since it was fetched: the new owner reads it again
                self.finished += 1
                continue
            result = validate(
                message.value(),
                rules=rules,
                now_ms=now_ms,
                high_priority_topic=topic in high_topics,
            )
            if isinstance(result, Rejection):
                self._spawn(self._dead_letter(Source(ticket, message), result, None, None))
            else:
                valid.append(Pending(result, Source(ticket, message)))
        self._delivery.submit_all(valid)

    def _on_assign(self, tps: list[TopicPartitionKey]) -> None:
        self.tracker.assign(tps)
        self.assigned.set()

    async def _on_revoke(self, tps: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Give up partitions: send what is open, wait (bounded) for their records, hand back
        their final positions for the consumer thread to commit, and forget them."""
        assert self._delivery is not None
        self._delivery.flush_open()
        deadline = asyncio.get_running_loop().time() + REVOKE_WAIT_S
        await self._wait_finished(tps, deadline)
        positions = self.tracker.to_commit(tps)
        self.tracker.forget(tps)
        return positions

    async def _wait_finished(self, tps: list[TopicPartitionKey] | None, deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        while self.tracker.unfinished(tps) and loop.time() < deadline:
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), deadline - loop.time())
        return self.tracker.unfinished(tps) == 0

    # -- outcomes (called by Delivery) -----------------------------------------------------------

    def delivered(self, batch: Batch[Source], response: Response) -> None:
        finish = self.tracker.finish
        for item in batch.items:
            finish(item.source.ticket)
        records = len(batch.items)
        self.finished += records
        delivered = self.counts.delivered
        delivered[batch.account] = delivered.get(batch.account, 0) + records
        self._progress.set()
        if self._receipts is not None:
            self._receipts.publish(
                Receipt(
                    account=batch.account,
                    records=records,
                    status=response.status,
                    batch_id=response.batch_id,
                    sent_at_ms=self._wall_ms(),
                    sources=offset_ranges(
                        (t.tp[0], t.tp[1], t.offset) for t in (i.source.ticket for i in batch.items)
                    ),
                )
            )

    async def dead_letter(
        self,
        item: Pending[Source],
        rejection: Rejection,
        status: int | None,
        body: bytes | None,
    ) -> None:
        await self._dead_letter(item.source, rejection, status, body)

    async def _dead_letter(
        self, source: Source, rejection: Rejection, status: int | None, body: bytes | None
    ) -> None:
        """Write to the DLQ until Kafka acknowledges it; only then is the record finished. While it
        fails, the partition's position cannot pass this record (SPEC §4.6)."""
        assert self._dlq is not None
        ticket, message = source.ticket, source.message
        attempt = 0
        while True:
            try:
                await self._dlq.send(message, rejection, http_status=status, http_body=body)
                break
            except DeadLetterError as exc:
                attempt += 1
                self.counts.dlq_write_failures += 1
                delay = self._backoff.delay(attempt, None, self._rng)
                self._log_dlq_failure(exc, attempt, delay)
                await asyncio.sleep(delay)
        self.tracker.finish(ticket)
        self.finished += 1
        self._progress.set()
        self.counts.bump(self.counts.dead_lettered, (rejection.code, rejection.stage))

    def _log_dlq_failure(self, exc: DeadLetterError, attempt: int, delay: float) -> None:
        """One error line per ``_DLQ_LOG_EVERY_S`` at most: while the DLQ is unwritable every stuck
        record retries, and a line per retry would flood the logs (the counter counts them all)."""
        now = time.monotonic()
        if now - self._dlq_logged_at >= _DLQ_LOG_EVERY_S:
            self._dlq_logged_at = now
            _log.error(
                "%s; retry %d in %.1f s (%d dead-letter writes failed so far)",
                exc,
                attempt,
                delay,
                self.counts.dlq_write_failures,
            )

    # -- commits -------------------------------------------------------------------------------

    async def _commit_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self._commit()
            except Exception:  # the next round tries again; the positions are still there
                _log.exception("periodic commit failed")

    async def _commit(self) -> None:
        """Commit every partition whose finished prefix moved since its last commit."""
        assert self._consumer is not None
        positions = self.tracker.to_commit()
        if positions:
            accepted = await self._consumer.commit(positions)
            self.tracker.committed(accepted)
            self.counts.commit_failures += len(positions) - len(accepted)
            if accepted:
                self.last_commit_s = time.time()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
