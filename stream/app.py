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
import gc
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import groupby
from typing import Any, cast

from aiohttp import web
from confluent_kafka import Message

from stream.api import ApiClient
from stream.batching import Pending
from stream.commits import Committer
from stream.config import Config
from stream.consumer import REVOKE_WAIT_S, ConsumerThread
from stream.delivery import Delivery
from stream.dlq import DeadLetterProducer
from stream.events import Record
from stream.finishing import Finisher, Source
from stream.http import Health, http_app
from stream.labels import LabelGate
from stream.leases import KafkaLeases
from stream.metrics import Metrics, State
from stream.offsets import OffsetTracker, Ticket, TopicPartitionKey
from stream.receipts import Receipts
from stream.reconcile import Reconciler
from stream.retry import Backoff
from stream.sharing import Sharing
from stream.tokens import Tokens, make_tokens, start_slots
from stream.validation import Rejection, Rules, validate_all
from stream.wire import make_session

__all__ = ["Pipeline"]

_log = logging.getLogger("stream.app")
_librdkafka_log = logging.getLogger("librdkafka")


@dataclass(frozen=True, slots=True)
class ShutdownBudget:
    """How ``DCR_SHUTDOWN_TIMEOUT_S`` is spent after SIGTERM (docs/design.md#shutdown).

    The whole stop fits in ``total_s``, which the Helm chart keeps below the pod's
    ``terminationGracePeriodSeconds`` (``shutdownTimeoutSeconds`` plus
    ``terminationGraceMarginSeconds``): the drain gets all of it but ``close_s``, which is kept
    back for the final commit, leaving the group and flushing the producers. What is not finished
    by then is left to the partitions' next owner, as after any rebalance: at-least-once, not a
    failure.
    """

    total_s: float
    close_s: float = 3.0

    @property
    def drain_s(self) -> float:
        return max(0.0, self.total_s - self.close_s)


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
        # The parts, made by ``_build`` (in the running loop) and closed by ``_close``.
        self._session: Any = None
        self._finisher: Finisher | None = None
        self._delivery: Delivery[Source] | None = None
        self._labels: LabelGate[Source] | None = None
        self._dlq: DeadLetterProducer | None = None
        self._receipts: Receipts | None = None
        self._consumer: ConsumerThread | None = None
        self._tokens_source: Tokens | None = None
        self._leases: KafkaLeases | None = None
        self._sharing: Sharing | None = None
        self._reconciler: Reconciler | None = None
        self._committer: Committer | None = None
        self.budget = ShutdownBudget(config.shutdown_timeout_s)
        self._stop_by = 0.0
        """Loop time by which the stop must be over; 0 until it starts."""
        self._revoke_wait_s = REVOKE_WAIT_S
        """How long a revoke waits for its partitions' records; nothing once the drain is over."""
        self.assigned = asyncio.Event()
        """Set once the group gave us partitions (readiness)."""
        self.http_port: int | None = None
        """The port ``/metrics`` and the probes listen on, once started."""

    # -- the run -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """The pipeline's phases: build every part, serve the probes, consume until ``stop`` (or
        the consumer fails), stop within the budget, close what is left."""
        loop = asyncio.get_running_loop()
        consumer, committer = await self._build(loop)
        http = await self._serve_http(consumer)
        # Start-up objects out of full passes, ten times rarer (docs/design.md#the-hot-path)
        gc.freeze()
        gc.set_threshold(*gc.get_threshold()[:2], 100)
        consumer.start()
        committing = loop.create_task(committer.run())
        try:
            return await self._until_stopped(stop, consumer, committing)
        finally:
            committing.cancel()
            await self._close(loop, http)

    async def _build(self, loop: asyncio.AbstractEventLoop) -> tuple[ConsumerThread, Committer]:
        """Every part of the pipeline, in the order they depend on each other."""
        config = self.config
        kafka_client: dict[str, Any] = {**config.client_config(), "logger": _librdkafka_log}
        kafka_consumer: dict[str, Any] = {**config.consumer_config(), "logger": _librdkafka_log}
        session = self._session = make_session(
            timeout_s=config.api_timeout_s, ca_bundle=config.api_ca_bundle
        )
        dlq = self._dlq = DeadLetterProducer(kafka_client, config.dlq_topic)
        if config.receipts_topic is not None:
            self._receipts = Receipts(kafka_client, config.receipts_topic)
        finisher = self._finisher = Finisher(
            self.tracker,
            self.counts,
            dlq=dlq,
            receipts=self._receipts,
            reconciling=config.reconcile,
            high_topics=self._high_topics,
            backoff=self._backoff,
            rng=self._rng,
            wall_ms=self._wall_ms,
        )
        leases, self._sharing = await start_slots(config, kafka_consumer, kafka_client, loop)
        self._leases = leases
        tokens = make_tokens(config, session, leases, self._rng, self._sharing)
        self._tokens_source = tokens
        client = ApiClient(
            session, base_url=config.api_base_url, version=config.api_version, tokens=tokens
        )
        delivery = self._delivery = finisher.delivery = Delivery(
            client=client,
            tokens=tokens,
            outcomes=finisher,
            version=config.api_version,
            max_records=config.batch_max_records,
            linger_s=config.batch_linger_ms / 1000,
            max_bytes=config.batch_max_bytes,
            rate_limit_rps=config.rate_limit_rps,
            backoff=self._backoff,
            wall_ms=self._wall_ms,
            rng=self._rng,
            metrics=self.metrics,
            realtime_rps=config.realtime_requests_per_second if config.realtime else None,
            urgent_within_s=config.urgent_within_s,
        )
        self._labels = LabelGate(
            client,
            refresh_s=config.labels_refresh_s,
            overridden=config.allowed_label_ids,
            release=delivery.submit_all,
            refuse=finisher.unknown_label,
            probe=finisher.probe,
        )
        if config.client_account_id is not None:
            self._labels.start([config.client_account_id])
        if config.reconcile:
            assert self._receipts is not None
            assert config.receipts_topic is not None
            self._reconciler = Reconciler(
                consumer_config=kafka_consumer,
                admin_config=kafka_client,
                topic=config.receipts_topic,
                group_id=f"{config.kafka_group_id}.reconcile",
                client=client,
                tokens=tokens,
                receipts=self._receipts,
                dlq=dlq,
                receipt_writes=finisher.receipt_writes,
                dlq_writes=finisher.dlq_writes,
                delay_s=config.status_delay_s,
                give_up_s=config.status_give_up_s,
                requests_per_minute=config.status_requests_per_minute,
                backoff=self._backoff,
                counts=self.counts,
                loop=loop,
                wall_ms=self._wall_ms,
                rng=self._rng,
                like_topic=config.kafka_topics[0],
            )
            await self._reconciler.start()
        consumer = self._consumer = ConsumerThread(
            kafka_consumer,
            config.kafka_topics,
            loop=loop,
            on_messages=self._on_messages,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self.tracker.forget,
            finished=lambda: finisher.finished,
            max_buffered=config.max_buffered_records,
            high_topics=config.kafka_high_priority_topics,
            finished_high=lambda: finisher.finished_high,
        )
        committer = self._committer = Committer(
            self.tracker,
            consumer.commit,
            group="input",
            interval_s=config.commit_interval_ms / 1000,
            counts=self.counts,
            each_round=self._warn_stalls,
        )
        _log.info("starting: topics %s, group %s", config.kafka_topics, config.kafka_group_id)
        return consumer, committer

    async def _until_stopped(
        self, stop: asyncio.Event, consumer: ConsumerThread, committing: asyncio.Task[None]
    ) -> int:
        """Consume until ``stop`` is set (then stop within the budget: 0) or the consumer fails
        (1, at once: what is not committed is read again by the partitions' next owner)."""
        consumer_done = asyncio.wrap_future(consumer.done)
        stopped = asyncio.get_running_loop().create_task(stop.wait())
        try:
            waits: list[asyncio.Future[Any]] = [stopped, consumer_done]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if consumer_done.done() and consumer_done.exception() is not None:
            # Already logged with its traceback by the thread; what is not committed is safe.
            _log.error("stopping: the Kafka consumer failed: %s", consumer_done.exception())
            return 1
        committing.cancel()
        return await self._shutdown()

    async def _close(self, loop: asyncio.AbstractEventLoop, http: web.AppRunner) -> None:
        """Close every part, within what is left of the stop's budget (all of ``close_s`` after
        a failure)."""
        left = self._left(loop) if self._stop_by else self.budget.close_s
        if self._finisher is not None:
            self._finisher.stop_writing()
        if self._reconciler is not None:
            await self._reconciler.close(self._left(loop) if self._stop_by else 1.0)
        if self._labels is not None:
            await self._labels.close()
        if self._delivery is not None:
            await self._delivery.close()
        if self._tokens_source is not None:
            await self._tokens_source.close()
        if self._leases is not None:
            await self._leases.close(self._left(loop) if self._stop_by else left)
        if self._sharing is not None:
            await self._sharing.close(self._left(loop) if self._stop_by else left)
        if self._session is not None:
            await self._session.close()
        if self._dlq is not None:
            self._dlq.close(self._left(loop) if self._stop_by else left)
        if self._receipts is not None:
            self._receipts.close(self._left(loop) if self._stop_by else left)
        await http.cleanup()

    def _finished(self) -> int:
        return self._finisher.finished if self._finisher is not None else 0

    async def _serve_http(self, consumer: ConsumerThread) -> web.AppRunner:
        health = Health(
            last_poll=lambda: (
                time.monotonic() if consumer.waiting_on_broker else consumer.last_poll
            ),
            threads=lambda: self._threads(consumer),
            ready=self.assigned.is_set,
            stall_s=self.config.liveness_stall_s,
            unready=self._unready,
            auth_refused=lambda: self._tokens_source.refused() if self._tokens_source else [],
        )
        self.metrics.watch(
            State(
                buffered=lambda: consumer.consumed - self._finished(),
                open_records=lambda: self._delivery.open_records if self._delivery else 0,
                paused=lambda: len(consumer.paused_partitions),
                assigned=lambda: len(consumer.assignment),
                lag=lambda: consumer.lag,
                last_commit=lambda: self._committer.last_commit_s if self._committer else 0.0,
                token_refreshes=lambda: getattr(self._tokens_source, "mint_count", 0),
                token_claims=lambda: self._sharing.outcomes() if self._sharing else {},
                rates=lambda: self._delivery.rates() if self._delivery else {},
                label_registries=lambda: self._labels.registries() if self._labels else {},
                label_refreshes=lambda: self._labels.refreshes if self._labels else {},
                label_probes=lambda: self._labels.probes if self._labels else {},
                label_held=lambda: self._labels.held() if self._labels else 0,
                pools=lambda: self._tokens_source.report() if self._tokens_source else {},
                slots_held=lambda: (
                    len(self._tokens_source.leases.owned()) if self._tokens_source else 0
                ),
                reconcile_lag=lambda: self._reconciler.lag_s() if self._reconciler else 0.0,
                reconcile_in_hand=lambda: self._reconciler.in_hand() if self._reconciler else 0,
                oldest_unfinished=self.tracker.oldest,
                dlq_blocked=lambda: self._finisher.dlq_blocked if self._finisher else {},
                ready=lambda: health.not_ready() is None,
            ),
            per_account=self.config.metrics_per_account,
        )
        runner = web.AppRunner(http_app(self.metrics, health), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "0.0.0.0", self.config.http_port)
        await site.start()
        self.http_port = runner.addresses[0][1]
        _log.info("http: /metrics, /healthz, /readyz on port %d", self.http_port)
        return runner

    def _unready(self) -> str | None:
        """Why ``/readyz`` fails despite partitions: no usable token, or dead letters the topic
        refuses until an operator acts (docs/dlq.md#writing)."""
        if self._tokens_source is not None and (why := self._tokens_source.unready()):
            return why
        return self._finisher.blocked() if self._finisher is not None else None

    def _threads(self, consumer: ConsumerThread) -> dict[str, bool]:
        """Every thread the service runs and whether it is alive, for liveness
        (docs/operations.md#health); the input consumer's end is a death unless the stop began."""
        return {
            "consumer": not consumer.done.done() or self._stop_by > 0,
            "token slots": self._leases is None or self._leases.alive,
            "token sharing": self._sharing is None or self._sharing.alive,
            "dlq producer": self._dlq is None or self._dlq.alive,
            "receipts producer": self._receipts is None or self._receipts.alive,
            **(self._reconciler.threads() if self._reconciler is not None else {}),
        }

    async def _shutdown(self) -> int:
        """SIGTERM/SIGINT: the whole stop within ``ShutdownBudget.total_s``, in order:

        1. stop fetching: pause every partition (polling goes on, the group keeps us);
        2. send every open batch now;
        3. drain: wait until every record is finished, for at most ``ShutdownBudget.drain_s``;
        4. stop delivering, so that what is unfinished now stays unfinished (a request cut short
           may still have reached the API: at-least-once);
        5. commit the finished prefix of every partition;
        6. close the consumer, which leaves the group; its revoke no longer waits (the drain is
           over) and commits nothing new; then leave the token slots' group, handing the slots
           over to the other replicas (docs/design.md#scaling), and stop reconciling: commit the
           receipts it finished and leave its group (what it holds is read again by the next
           owner, docs/design.md#reconciliation);
        7. (``run``) flush the producers in what is left of the budget.

        The records consumed and not committed are left to the partitions' next owner, which
        consumes them again; the last log line counts them. Returns 0: that is a normal stop.
        """
        assert self._consumer is not None
        assert self._delivery is not None
        assert self._labels is not None
        assert self._committer is not None
        assert self._finisher is not None
        loop = asyncio.get_running_loop()
        budget = self.budget
        started = loop.time()
        self._stop_by = started + budget.total_s
        _log.info("shutting down: draining for up to %.1f s", budget.drain_s)
        await self._consumer.stop_fetching()
        self._delivery.flush_open()
        await self._finisher.wait_finished(None, started + budget.drain_s)
        await self._delivery.close()
        await self._labels.close()
        self._finisher.stop_writing()
        self._revoke_wait_s = 0.0
        with contextlib.suppress(Exception):  # logged by the consumer thread
            await asyncio.wait_for(self._committer.commit_once(), self._stop_by - loop.time())
        left = self.tracker.uncommitted()
        try:
            await asyncio.wait_for(asyncio.shield(self._consumer.close()), self._left(loop))
        except TimeoutError:
            _log.warning("shutting down: leaving the group took too long; exiting without it")
        if self._leases is not None:
            await self._leases.close(self._left(loop))
        if self._reconciler is not None:
            await self._reconciler.close(self._left(loop))
        if left:
            _log.info(
                "shut down after %.1f s: %d records consumed and not committed are left to the "
                "partitions' next owner, which consumes them again",
                loop.time() - started,
                left,
            )
        else:
            _log.info(
                "shut down after %.1f s: every consumed record was finished and committed",
                loop.time() - started,
            )
        return 0

    def _left(self, loop: asyncio.AbstractEventLoop) -> float:
        return max(0.0, self._stop_by - loop.time())

    # -- consume → validate → submit ----------------------------------------------------------

    def _on_messages(self, messages: list[Message]) -> None:
        """One consumed slice, in order, a partition's run of messages at a time: the once-a-record
        path (docs/design.md#the-hot-path, ``bench/``)."""
        assert self._delivery is not None
        assert self._labels is not None
        assert self._finisher is not None
        finisher = self._finisher
        now_ms = self._wall_ms()
        receive_run, rules, high_topics = self.tracker.receive_run, self._rules, self._high_topics
        self.counts.consumed += len(messages)
        valid: list[Pending[Source]] = []
        append = valid.append
        start = 0
        partitions = zip(
            map(Message.topic, messages), map(Message.partition, messages), strict=True
        )
        for (topic, partition), group in groupby(partitions):
            end = start + len(list(group))
            run = messages[start:end]
            start = end
            offsets = cast(list[int], list(map(Message.offset, run)))
            claim = receive_run(cast(str, topic), partition or 0, offsets)
            if claim is None:  # revoked since it was fetched: the new owner reads it again
                finisher.finish((), unowned=len(run), high=topic in high_topics)
                continue
            results = validate_all(
                map(Message.value, run),
                rules=rules,
                now_ms=now_ms,
                high_priority_topic=topic in high_topics,
            )
            for index, (message, result) in enumerate(zip(run, results, strict=True)):
                source = Source(Ticket(claim, index), message)
                if type(result) is Record:
                    append(Pending(result, source))
                else:
                    finisher.reject(source, cast(Rejection, result))
        self._delivery.submit_all(self._labels.admit(valid))

    def _on_assign(self, tps: list[TopicPartitionKey]) -> None:
        self.tracker.assign(tps)
        self.assigned.set()

    async def _on_revoke(self, tps: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Give up partitions: stop sending their records, wait (bounded) for the requests and
        writes on their way, hand back their final positions for the consumer thread to commit,
        and forget them (docs/design.md#consumer)."""
        assert self._delivery is not None
        assert self._finisher is not None
        self.tracker.leave(tps)
        self._delivery.drop_unowned()
        deadline = asyncio.get_running_loop().time() + self._revoke_wait_s
        await self._finisher.wait_answered(deadline, self._delivery.sending_unowned)
        positions = self.tracker.to_commit(tps)
        self.tracker.forget(tps)
        return positions

    # -- commits -------------------------------------------------------------------------------

    def _warn_stalls(self) -> None:
        """A warning when a partition's oldest unfinished record passes ``DCR_STUCK_WARN_S``, once
        per stall, and a line when it moves on (docs/design.md#bounded-progress)."""
        started, ended = self.tracker.stalls(self.config.stuck_warn_s)
        for stall in started:
            topic, partition = stall.tp
            _log.warning(
                "partition %s[%d] is stuck: offset %d has been unfinished for %.0f s "
                "(DCR_STUCK_WARN_S=%g); its commits cannot pass it",
                topic,
                partition,
                stall.offset,
                stall.age_s,
                self.config.stuck_warn_s,
            )
        for topic, partition in ended:
            _log.info("partition %s[%d] moves on: its stall is over", topic, partition)
