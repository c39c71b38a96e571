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
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from itertools import groupby
from typing import Any, cast

from aiohttp import web
from confluent_kafka import Message
from msgspec import Struct

from stream.api import ApiClient, refused_field
from stream.batching import Batch, Pending
from stream.commits import Committer
from stream.config import Config
from stream.consumer import REVOKE_WAIT_S, ConsumerThread
from stream.credentials import (
    CredentialsFile,
    CredentialSource,
    KeyPair,
    StaticTokens,
    TokenFileSource,
)
from stream.delivery import Delivery, api_rejection
from stream.dlq import DeadLetterProducer
from stream.errors import DeadLetterError, ReceiptError
from stream.events import Record
from stream.http import Health, http_app
from stream.labels import LabelGate, Probe
from stream.leases import KafkaLeases, Leases
from stream.metrics import Metrics, State
from stream.minting import Minter
from stream.offsets import OffsetTracker, Ticket, TopicPartitionKey
from stream.receipts import Receipt, Receipts, offset_ranges
from stream.reconcile import Reconciler
from stream.retry import AckedWriter, Backoff
from stream.secrets import Secret
from stream.tokens import Tokens
from stream.validation import Rejection, Rules, validate_all
from stream.wire import Response, make_session

__all__ = ["Pipeline", "make_source", "make_tokens"]

_log = logging.getLogger("stream.app")
_librdkafka_log = logging.getLogger("librdkafka")


class Source(Struct, frozen=True, gc=False):
    """What the pipeline keeps with each record: its offset claim and the original message (DLQ).

    One per record, hence ``gc=False`` (docs/design.md#the-hot-path).
    """

    ticket: Ticket
    message: Message


_UNKNOWN_LABEL = Rejection(
    code="unknown_label",
    field="label_id",
    message="label_id is not a dynamic label of the account",
    stage="validate",
)


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


def make_tokens(
    config: Config, session: Any, leases: Leases | None, rng: random.Random | None = None
) -> Tokens:
    """Each account's token pool, from the one way to authenticate configured (``leases`` None:
    every slot held here, for a tool such as ``dcr-stream status``)."""
    return Tokens(
        make_source(config),
        minter=Minter(session, base_url=config.api_base_url),
        leases=leases,
        requests_per_minute=config.token_requests_per_minute,
        backoff=(config.retry_base_ms / 1000, config.retry_cap_ms / 1000),
        rng=rng,
        give_up_s=config.auth_give_up_s,
        budget=config.minting,
    )


def make_source(config: Config) -> CredentialSource:
    """The one way to authenticate configured."""
    if config.api_token is not None:
        tokens = [t.strip() for t in config.api_token.reveal().split(",") if t.strip()]
        return StaticTokens([Secret(t) for t in tokens])
    if config.api_token_file is not None:
        return TokenFileSource(config.api_token_file)
    if config.api_credentials_file is not None:
        return CredentialsFile(config.api_credentials_file)
    assert config.api_key_id is not None
    assert config.api_key is not None
    return KeyPair(config.api_key_id, config.api_key)


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
        self._dlq_writes = AckedWriter(
            DeadLetterError,
            what="dead-letter writes",
            backoff=self._backoff,
            rng=self._rng,
            log=_log,
            count=self._dlq_write_failed,
            context=self._dlq_blocked_note,
        )
        self._receipt_writes = AckedWriter(
            ReceiptError, what="receipt writes", backoff=self._backoff, rng=self._rng, log=_log
        )
        self.finished = 0
        """Records delivered or dead-lettered since start; the consumer thread reads it."""
        self.finished_high = 0
        """Of those, the records of high-priority topics (their own backpressure bound)."""
        self._progress = asyncio.Event()
        """Set whenever records finish; the bounded waits for draining listen to it."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._delivery: Delivery[Source] | None = None
        self._labels: LabelGate[Source] | None = None
        self._dlq: DeadLetterProducer | None = None
        self._receipts: Receipts | None = None
        self._consumer: ConsumerThread | None = None
        self._tokens_source: Tokens | None = None
        self._leases: KafkaLeases | None = None
        self._reconciler: Reconciler | None = None
        self._committer: Committer | None = None
        self._dlq_blocked: dict[TopicPartitionKey, int] = {}
        """Per partition, records whose dead letter Kafka refuses until an operator acts
        (docs/dlq.md#writing)."""
        self._dlq_blocked_by = ""
        """The latest such refusal, for ``/readyz``."""
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
        config = self.config
        loop = asyncio.get_running_loop()
        session = make_session(timeout_s=config.api_timeout_s, ca_bundle=config.api_ca_bundle)
        kafka_client: dict[str, Any] = {**config.client_config(), "logger": _librdkafka_log}
        self._dlq = DeadLetterProducer(kafka_client, config.dlq_topic)
        if config.receipts_topic is not None:
            self._receipts = Receipts(kafka_client, config.receipts_topic)
        leases = KafkaLeases(
            {**config.consumer_config(), "logger": _librdkafka_log},
            kafka_client,
            topic=config.token_topic,
            group_id=f"{config.kafka_group_id}.tokens",
            slots=config.token_pool_size,
            loop=loop,
        )
        await leases.start()
        self._leases = leases
        self._tokens_source = self._tokens(session, leases)
        client = ApiClient(
            session,
            base_url=config.api_base_url,
            version=config.api_version,
            tokens=self._tokens_source,
        )
        self._delivery = Delivery(
            client=client,
            tokens=self._tokens_source,
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
            realtime_rps=config.realtime_requests_per_second if config.realtime else None,
            urgent_within_s=config.urgent_within_s,
        )
        self._labels = LabelGate(
            client,
            refresh_s=config.labels_refresh_s,
            overridden=config.allowed_label_ids,
            release=self._delivery.submit_all,
            refuse=self._unknown_label,
            probe=self._probe,
        )
        if config.client_account_id is not None:
            self._labels.start([config.client_account_id])
        if config.reconcile:
            assert self._receipts is not None
            assert config.receipts_topic is not None
            self._reconciler = Reconciler(
                consumer_config={**config.consumer_config(), "logger": _librdkafka_log},
                admin_config=kafka_client,
                topic=config.receipts_topic,
                group_id=f"{config.kafka_group_id}.reconcile",
                client=client,
                tokens=self._tokens_source,
                receipts=self._receipts,
                dlq=self._dlq,
                receipt_writes=self._receipt_writes,
                dlq_writes=self._dlq_writes,
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
            high_topics=config.kafka_high_priority_topics,
            finished_high=lambda: self.finished_high,
        )
        self._committer = Committer(
            self.tracker,
            self._consumer.commit,
            group="input",
            interval_s=config.commit_interval_ms / 1000,
            counts=self.counts,
            each_round=self._warn_stalls,
        )
        _log.info("starting: topics %s, group %s", config.kafka_topics, config.kafka_group_id)
        http = await self._serve_http(self._consumer)
        # What exists now lives as long as the process: out of the collector's full passes,
        # which otherwise walk it all again and again (docs/design.md#the-hot-path).
        gc.freeze()
        self._consumer.start()
        committer = loop.create_task(self._committer.run())
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
            if self._reconciler is not None:
                await self._reconciler.close(self._left(loop) if self._stop_by else 1.0)
            await self._labels.close()
            await self._delivery.close()
            await self._tokens_source.close()
            await leases.close(self._left(loop) if self._stop_by else self.budget.close_s)
            await session.close()
            # Within what is left of the stop's budget (all of ``close_s`` after a failure).
            self._dlq.close(self._left(loop) if self._stop_by else self.budget.close_s)
            if self._receipts is not None:
                self._receipts.close(self._left(loop) if self._stop_by else self.budget.close_s)
            await http.cleanup()

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
                buffered=lambda: consumer.consumed - self.finished,
                open_records=lambda: self._delivery.open_records if self._delivery else 0,
                paused=lambda: len(consumer.paused_partitions),
                assigned=lambda: len(consumer.assignment),
                lag=lambda: consumer.lag,
                last_commit=lambda: self._committer.last_commit_s if self._committer else 0.0,
                token_refreshes=lambda: getattr(self._tokens_source, "mint_count", 0),
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
                dlq_blocked=lambda: self._dlq_blocked,
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
        """Why ``/readyz`` fails although the group gave us partitions: no usable token, or dead
        letters the topic refuses until an operator acts (docs/dlq.md#writing)."""
        if self._tokens_source is not None and (why := self._tokens_source.unready()):
            return why
        if self._dlq_blocked:
            return (
                f"dead letters cannot be written to {self.config.dlq_topic}: "
                f"{self._dlq_blocked_by}; {sum(self._dlq_blocked.values())} records on "
                f"{len(self._dlq_blocked)} partitions wait, and those partitions commit no further"
            )
        return None

    def _threads(self, consumer: ConsumerThread) -> dict[str, bool]:
        """Every thread the service runs and whether it is alive, for liveness
        (docs/operations.md#health); the input consumer's end is a death unless the stop began."""
        return {
            "consumer": not consumer.done.done() or self._stop_by > 0,
            "token slots": self._leases is None or self._leases.alive,
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
        loop = asyncio.get_running_loop()
        budget = self.budget
        started = loop.time()
        self._stop_by = started + budget.total_s
        _log.info("shutting down: draining for up to %.1f s", budget.drain_s)
        await self._consumer.stop_fetching()
        self._delivery.flush_open()
        await self._wait_finished(None, started + budget.drain_s)
        await self._delivery.close()
        await self._labels.close()
        for task in self._tasks:  # dead-letter writes not yet acknowledged
            task.cancel()
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

    def _tokens(self, session: Any, leases: KafkaLeases) -> Tokens:
        return make_tokens(self.config, session, leases, self._rng)

    # -- consume → validate → submit ----------------------------------------------------------

    def _on_messages(self, messages: list[Message]) -> None:
        """One consumed slice, in order, a partition's run of messages at a time: the once-a-record
        path (docs/design.md#the-hot-path, ``bench/``)."""
        assert self._delivery is not None
        assert self._labels is not None
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
                self._finish((), unowned=len(run), high=topic in high_topics)
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
                    rejection = cast(Rejection, result)
                    self._spawn(self._dead_letter(source, rejection, None, None))
        self._delivery.submit_all(self._labels.admit(valid))

    def _on_assign(self, tps: list[TopicPartitionKey]) -> None:
        self.tracker.assign(tps)
        self.assigned.set()

    async def _on_revoke(self, tps: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Give up partitions: send what is open, wait (bounded) for their records, hand back
        their final positions for the consumer thread to commit, and forget them."""
        assert self._delivery is not None
        self._delivery.flush_open()
        deadline = asyncio.get_running_loop().time() + self._revoke_wait_s
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

    def _finish(self, tickets: Collection[Ticket], *, unowned: int = 0, high: bool = False) -> None:
        """Records leave the pipeline (delivered, dead-lettered, or, ``unowned`` of them, no longer
        ours): their offsets may be committed, backpressure counts them out, and a drain waiting
        for them wakes up. ``high``: the ``unowned`` came from a high-priority topic."""
        self.tracker.finish_all(tickets)
        self.finished += len(tickets) + unowned
        high_topics = self._high_topics
        if high_topics:  # backpressure counts these apart (docs/design.md#backpressure)
            self.finished_high += sum(1 for t in tickets if t.tp[0] in high_topics)
            self.finished_high += unowned if high else 0
        self._progress.set()

    def delivered(self, batch: Batch[Source], response: Response) -> None:
        tickets = [item.source.ticket for item in batch.items]
        records = len(batch.items)
        delivered = self.counts.delivered
        delivered[batch.account] = delivered.get(batch.account, 0) + records
        if self._receipts is None:
            self._finish(tickets)
            return
        receipt = Receipt(
            account=batch.account,
            records=records,
            status=response.status,
            batch_id=response.batch_id,
            sent_at_ms=self._wall_ms(),
            sources=offset_ranges((t.tp[0], t.tp[1], t.offset) for t in tickets),
            kind="single" if batch.single else "accepted",
        )
        if self._reconciler is None:
            self._finish(tickets)
            self._receipts.publish(receipt)
        else:
            # The receipt is the reconciler's only memory of the batch: its records are finished
            # (committable) once Kafka has it (docs/design.md#reconciliation).
            self._spawn(self._write_receipt(tickets, receipt))

    async def _write_receipt(self, tickets: list[Ticket], receipt: Receipt) -> None:
        receipts = self._receipts
        assert receipts is not None
        await self._receipt_writes.write(lambda: receipts.send(receipt))
        self._finish(tickets)

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
        fails, the partition's position cannot pass this record (docs/design.md#at-least-once);
        a refusal no retry cures (``DeadLetterError.permanent``) blocks the partition loudly until
        it is written (docs/design.md#bounded-progress). Once the partition is no longer ours, its
        next owner reads the record again and writes the letter: this one stops trying."""
        dlq = self._dlq
        assert dlq is not None
        ticket, message = source.ticket, source.message
        blocked = False

        def refused(exc: DeadLetterError) -> None:
            nonlocal blocked
            if exc.permanent:
                self._dlq_blocked_by = exc.reason
                if not blocked:
                    blocked = True
                    self._dlq_blocked[ticket.tp] = self._dlq_blocked.get(ticket.tp, 0) + 1

        try:
            letter = await self._dlq_writes.write(
                lambda: dlq.send(message, rejection, http_status=status, http_body=body),
                ours=lambda: self.tracker.tracks(ticket.run),
                refused=refused,
            )
        finally:
            if blocked:
                self._unblock(ticket.tp)
        self._finish((ticket,))
        if letter is not None:
            self.counts.bump(self.counts.dead_lettered, (rejection.code, rejection.stage))
            self.counts.dlq_truncated += 1 if letter.cut else 0

    def _unblock(self, tp: TopicPartitionKey) -> None:
        left = self._dlq_blocked[tp] - 1
        if left:
            self._dlq_blocked[tp] = left
        else:
            del self._dlq_blocked[tp]

    def _dlq_write_failed(self) -> None:
        self.counts.dlq_write_failures += 1

    def _dlq_blocked_note(self) -> str:
        """What the dead-letter error line adds while the topic refuses letters for good."""
        if not self._dlq_blocked:
            return ""
        return (
            f"; the topic {self.config.dlq_topic} refuses it until an operator acts: "
            f"{sum(self._dlq_blocked.values())} records on partitions "
            f"{_partitions(self._dlq_blocked)} wait, and their commits stop"
        )

    # -- labels (called by LabelGate) ---------------------------------------------------------

    def _unknown_label(self, item: Pending[Source]) -> None:
        self._spawn(self._dead_letter(item.source, _UNKNOWN_LABEL, None, None))

    async def _probe(self, item: Pending[Source]) -> Probe:
        """Send one record whose label the registry could not confirm; dead-letter it if refused."""
        assert self._delivery is not None
        response = await self._delivery.probe(item)
        if response is None:
            return "gone"
        if response.kind == "ok":
            return "accepted"
        # Only a refusal that names the label id as its field is one of the label: a message that
        # mentions "label" may be about anything (docs/design.md#labels).
        if refused_field(response.body) == "label_id":
            await self._dead_letter(item.source, _UNKNOWN_LABEL, response.status, response.body)
            return "label_refused"
        rejection = api_rejection(response.status)
        await self._dead_letter(item.source, rejection, response.status, response.body)
        return "record_refused"

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

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _partitions(tps: Collection[TopicPartitionKey]) -> str:
    return ", ".join(f"{topic}[{partition}]" for topic, partition in sorted(tps))
