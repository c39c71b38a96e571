"""After the 200: each accepted batch's status, record by record (docs/design.md#reconciliation).

The batch endpoint is asynchronous: its 200 means "queued". Whether each record reached a phone is
known later, from the batch status endpoint. The ``Reconciler`` is the service's last step, off the
input path::

    receipts topic (kind ``accepted`` / ``recheck``), group ``<DCR_KAFKA_GROUP_ID>.reconcile``
    → wait until ``sent_at_ms + DCR_STATUS_DELAY_S`` (a recheck: until its ``check_at_ms``)
    → fetch the batch status (its own per-token budget, ``stream.statuses.StatusBudget``; retried
      with backoff)
    → read the original events at the receipt's source offsets (``stream.originals``)
    → match each status to its event by (caller, receiver, label, starts_at) and classify it
      (``stream.statuses``)
    → failed records to the DLQ (stage ``status``), then one ``outcome`` receipt for the final
      ones, and one ``recheck`` receipt for those still pending, each acknowledged by Kafka
    → commit the receipt's offset (the finished prefix of each receipts partition,
      ``stream.commits``)

Its memory is Kafka: a receipt is committed only after everything it led to was acknowledged, so a
crash (``kill -9`` included) or a rebalance re-processes it (at-least-once: an outcome may be
reported twice, never lost). A status still pending is not waited for in memory: it is written
back as a ``recheck`` receipt and the receipt that found it is committed, so a slow batch never
holds back the commits of the receipts after it. Its own ``outcome`` receipts are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from confluent_kafka import KafkaException, Message

from stream.api import ApiClient, StatusAnswer
from stream.commits import Committer
from stream.consumer import ConsumerThread
from stream.dlq import DeadLetterProducer
from stream.due import DueQueue, Oldest
from stream.errors import AuthError, DeadLetterError, ReceiptError, TopicError
from stream.metrics import Counts, status_class
from stream.offsets import OffsetTracker, Ticket, TopicPartitionKey
from stream.originals import OriginalReader
from stream.receipts import Outcome, Receipt, Receipts, offsets_of, outcome_receipt, sources_of
from stream.retry import AckedWriter, Backoff
from stream.statuses import StatusBudget, Verdict, classify, match
from stream.tokens import Tokens
from stream.topics import TopicSpec, ensure_topics, partitions
from stream.validation import CODES, Rejection

__all__ = ["Reconciler"]

_log = logging.getLogger("stream.reconcile")

_FETCH_ATTEMPTS = 5
"""Status requests tried in a row for one receipt before it is written back as a recheck."""

_LOOK_ATTEMPTS = 5
"""Looks at one receipt that raise, with the backoff between (at most 7.5 s in all with the default
one), before its records are reported failed: a receipt always finishes."""

_RECHECK_CAP_S = 300.0
"""The longest wait between two looks at a pending status (the first waits DCR_STATUS_DELAY_S,
each next one twice as long)."""

_MAX_RECEIPTS = 20_000
"""Receipts taken and not yet finished, beyond which the receipts partitions pause."""

_COMMIT_INTERVAL_S = 1.0
"""How often the receipts consumed are committed (their finished prefix)."""


class Reconciler:
    """Consumes the receipts topic in a group of its own and reports every record's outcome
    (see the module's docstring). ``start``, then ``close`` on the way out."""

    def __init__(
        self,
        *,
        consumer_config: Mapping[str, Any],
        admin_config: Mapping[str, Any],
        topic: str,
        group_id: str,
        client: ApiClient,
        tokens: Tokens,
        receipts: Receipts,
        dlq: DeadLetterProducer,
        receipt_writes: AckedWriter[ReceiptError],
        dlq_writes: AckedWriter[DeadLetterError],
        delay_s: float,
        give_up_s: float,
        requests_per_minute: float,
        backoff: Backoff,
        counts: Counts,
        loop: asyncio.AbstractEventLoop,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        rng: random.Random | None = None,
        like_topic: str | None = None,
    ) -> None:
        self.topic = topic
        self._consumer_config = {
            **consumer_config,
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
        }
        self._reader_config = {**consumer_config, "group.id": f"{group_id}.reader"}
        self._admin_config = dict(admin_config)
        self._client = client
        self._receipts = receipts
        self._dlq = dlq
        self._receipt_writes = receipt_writes
        """The pipeline's: one rate-limited error line for every receipt write that fails."""
        self._dlq_writes = dlq_writes
        """The pipeline's, counted in ``dcr_dlq_write_failures`` with the input's dead letters."""
        self._delay_ms = int(delay_s * 1000)
        self._give_up_ms = int(give_up_s * 1000)
        self._budget = StatusBudget(tokens, requests_per_minute)
        self._backoff = backoff
        self.counts = counts
        self._loop = loop
        self._wall_ms = wall_ms
        self._rng = rng or random.Random()
        self._like_topic = like_topic
        """A missing receipts topic is created with as many partitions as this one has."""
        self._tracker = OffsetTracker()
        self._waiting: DueQueue[tuple[Ticket, Receipt]] = DueQueue(
            loop, wall_ms, lambda due: self._look_at(*due)
        )
        """Receipts not yet due, under one timer; a receipt gets its task once due."""
        self._tasks: dict[TopicPartitionKey, dict[asyncio.Task[None], int]] = {}
        """Per receipts partition, the task of each receipt due and its ``sent_at_ms``."""
        self._held = Oldest()
        """The count and oldest ``sent_at_ms`` of the receipts in hand, waiting or due, for the
        gauges: a scrape costs the same however many are held."""
        self.finished = 0
        """Receipts finished since start (the consumer thread reads it, for backpressure)."""
        self._consumer: ConsumerThread | None = None
        self._reader: OriginalReader | None = None
        self._commits: Committer | None = None
        self._committing: asyncio.Task[None] | None = None
        self._decoder = msgspec.json.Decoder(Receipt)
        self._closed = False

    def __repr__(self) -> str:
        return f"Reconciler(topic={self.topic!r})"

    # -- life ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Make sure the receipts topic exists, then join the group (on the consumer's thread)."""
        await asyncio.to_thread(self._ensure_topic)
        self._reader = OriginalReader(self._reader_config)
        self._consumer = ConsumerThread(
            self._consumer_config,
            [self.topic],
            loop=self._loop,
            on_messages=self._on_messages,
            on_assign=self._tracker.assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
            finished=lambda: self.finished,
            max_buffered=_MAX_RECEIPTS,
        )
        self._consumer.start()
        self._commits = Committer(
            self._tracker,
            self._consumer.commit,
            group="reconcile",
            interval_s=_COMMIT_INTERVAL_S,
            counts=self.counts,
        )
        self._committing = self._loop.create_task(self._commits.run())

    async def close(self, timeout_s: float) -> None:
        """Stop reconciling: what is unfinished is left to the next owner of its receipts (which
        reads them again), what is finished is committed, then the group is left."""
        if self._closed:
            return
        self._closed = True
        if self._committing is not None:
            self._committing.cancel()
        for _, receipt in self._waiting.close():
            self._held.remove(receipt.sent_at_ms)
        for tasks in self._tasks.values():
            for task in tasks:
                task.cancel()
        if self._consumer is not None:
            assert self._commits is not None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._commits.commit_once(), timeout_s)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._consumer.close()), timeout_s)
        if self._reader is not None:
            await self._reader.close()

    def lag_s(self) -> float:
        """Seconds since the oldest receipt in hand was accepted (0 when none is in hand)."""
        oldest = self._held.oldest()
        return 0.0 if oldest is None else max(0.0, (self._wall_ms() - oldest) / 1000)

    def in_hand(self) -> int:
        return self._held.count

    def threads(self) -> dict[str, bool]:
        """Its threads and whether each is alive (docs/operations.md#health): the receipts
        consumer's (ended while not closing: dead) and the originals reader's."""
        consumer = self._consumer is None or self._closed or not self._consumer.done.done()
        reader = self._reader is None or self._reader.alive
        return {"reconcile consumer": consumer, "originals reader": reader}

    def _ensure_topic(self) -> None:
        """Make sure the receipts topic exists, creating it only when missing (``stream.topics``),
        with as many partitions as ``like_topic`` (its input topic) has."""
        try:
            like = self._like_topic
            found = partitions(self._admin_config, [like]) if like is not None else {}
            spec = TopicSpec(name=self.topic, partitions=found.get(like or "", 1))
            ensure_topics(self._admin_config, [spec])
        except (KafkaException, TopicError) as exc:
            _log.warning("reconcile: cannot make sure %s exists: %s", self.topic, exc)

    # -- receipts in -------------------------------------------------------------------------------

    def _on_messages(self, messages: list[Message]) -> None:
        for message in messages:
            topic = message.topic() or ""
            ticket = self._tracker.receive(topic, message.partition() or 0, message.offset() or 0)
            if ticket is None:
                continue
            try:
                receipt = self._decoder.decode(message.value() or b"")
            except msgspec.DecodeError as exc:
                _log.warning("reconcile: not a receipt at %s: %s", ticket, exc)
                self._done(ticket)
                continue
            if receipt.kind in ("outcome", "single"):
                self._done(ticket)  # its own output, or final at its 2xx
                continue
            if receipt.batch_id is None:
                _log.warning(
                    "reconcile: a receipt of %d records of %s has no batch id; not reconciled",
                    receipt.records,
                    receipt.account,
                )
                self.counts.bump(
                    self.counts.reconciled, ("unreconciled", "no_batch_id"), receipt.records
                )
                self._done(ticket)
                continue
            self._held.add(receipt.sent_at_ms)
            due_ms = receipt.check_at_ms or receipt.sent_at_ms + self._delay_ms
            due_ms = min(due_ms, receipt.sent_at_ms + self._give_up_ms)
            if due_ms > self._wall_ms():
                self._waiting.push(due_ms, (ticket, receipt))
            else:
                self._look_at(ticket, receipt)

    def _look_at(self, ticket: Ticket, receipt: Receipt) -> None:
        task = self._loop.create_task(self._reconcile(ticket, receipt))
        self._tasks.setdefault(ticket.tp, {})[task] = receipt.sent_at_ms
        task.add_done_callback(functools.partial(self._untrack, ticket.tp))

    def _untrack(self, tp: TopicPartitionKey, task: asyncio.Task[None]) -> None:
        sent_at_ms = self._tasks.get(tp, {}).pop(task, None)
        if sent_at_ms is not None:
            self._held.remove(sent_at_ms)

    def _done(self, ticket: Ticket) -> None:
        self._tracker.finish(ticket)
        self.finished += 1

    async def _on_revoke(self, tps: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Give up receipts partitions: their receipts in hand are dropped (the next owner reads
        them again), what is finished is committed."""
        self._drop(tps)
        positions = self._tracker.to_commit(tps)
        self._tracker.forget(tps)
        return positions

    def _on_lost(self, tps: list[TopicPartitionKey]) -> None:
        self._drop(tps)
        self._tracker.forget(tps)

    def _drop(self, tps: list[TopicPartitionKey]) -> None:
        """Cancel the receipts in hand of these partitions; they leave the backpressure count as
        if finished (they are no longer ours: the next owner reads them again)."""
        gone = set(tps)
        for _, receipt in self._waiting.remove(lambda due: due[0].tp in gone):
            self._held.remove(receipt.sent_at_ms)
            self.finished += 1
        for tp in tps:
            for task, sent_at_ms in self._tasks.pop(tp, {}).items():
                self._held.remove(sent_at_ms)
                if not task.done():
                    task.cancel()
                    self.finished += 1

    # -- one receipt -------------------------------------------------------------------------------

    async def _reconcile(self, ticket: Ticket, receipt: Receipt) -> None:
        """Ask, match, report (the receipt is due: ``_wake``); finish the receipt once every write
        was acknowledged. A look that raises is tried again with the backoff, ``_LOOK_ATTEMPTS``
        times in all; then its records are reported failed (``_give_up``), so the receipt always
        finishes (docs/design.md#reconciliation)."""
        for attempt in range(1, _LOOK_ATTEMPTS + 1):
            try:
                await self._look(receipt)
                break
            except Exception as exc:
                # A bug or a state this code did not foresee: a retry may pass (a status answer
                # that changed, a reader that recovered); a receipt left unfinished would hold
                # its partition's commits for good.
                if attempt == _LOOK_ATTEMPTS:
                    _log.exception(
                        "reconcile: batch %s failed %d times; its records are reported failed",
                        receipt.batch_id,
                        attempt,
                    )
                    await self._give_up(receipt, exc)
                    break
                _log.warning(
                    "reconcile: batch %s failed (%r); retry %d", receipt.batch_id, exc, attempt
                )
                await asyncio.sleep(self._backoff.delay(attempt, None, self._rng))
        self._done(ticket)

    async def _look(self, receipt: Receipt) -> None:
        """One look at a batch: its status, its originals, the report."""
        answer = await self._fetch(receipt)
        assert self._reader is not None
        originals = await self._reader.read(offsets_of(receipt.sources))
        if len(originals) < receipt.records:
            _log.warning(
                "reconcile: batch %s: %d of its %d records could not be read back",
                receipt.batch_id,
                receipt.records - len(originals),
                receipt.records,
            )
        verdicts = self._verdicts(receipt, answer, originals)
        await self._report(receipt, verdicts)

    async def _give_up(self, receipt: Receipt, exc: Exception) -> None:
        """Report every record of a receipt that kept failing as failed, ``unknown_status``: a
        dead letter for each original that can still be read, and one outcome receipt naming every
        source offset (from the receipt, so it needs no original). Should the writes fail too, the
        receipt is counted ``unreconciled`` (code ``error``) and finished all the same."""
        why = f"reconciliation failed {_LOOK_ATTEMPTS} times: {exc!r}"
        verdict = Verdict("failed", "unknown_status", why)
        positions = offsets_of(receipt.sources)
        assert self._reader is not None
        try:
            originals = await self._reader.read(positions)
        except Exception as error:
            _log.warning("reconcile: batch %s: no original read back (%r)", receipt.batch_id, error)
            originals = []
        try:
            await asyncio.gather(*(self._dead_letter(m, verdict) for m in originals))
            outcomes = [
                Outcome(
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    status="failed",
                    code=verdict.code,
                    message=why,
                    id=None,
                )
                for topic, partition, offset in positions
            ]
            await self._write(outcome_receipt(receipt, outcomes, receipt.sources))
        except Exception:
            _log.exception("reconcile: batch %s cannot be reported either", receipt.batch_id)
            self.counts.bump(self.counts.reconciled, ("unreconciled", "error"), receipt.records)
            return
        self.counts.bump(self.counts.reconciled, ("failed", "unknown_status"), len(outcomes))

    async def _fetch(self, receipt: Receipt) -> StatusAnswer:
        """The batch's status: a 2xx answer, or after ``_FETCH_ATTEMPTS`` failures the last one
        (its records are then still pending: written back as a recheck)."""
        assert receipt.batch_id is not None
        answer = StatusAnswer(0, error="not asked")
        for attempt in range(1, _FETCH_ATTEMPTS + 1):
            try:
                token = await self._budget.take(receipt.account)
            except AuthError as exc:
                answer = StatusAnswer(0, error=str(exc))
            else:
                answer = await self._client.get_batch_status(
                    receipt.account, receipt.batch_id, token
                )
                klass = status_class(answer.status)
                self.counts.bump(self.counts.status_requests, (receipt.account, klass))
            if answer.batch is not None or answer.status == 404:
                return answer
            if attempt < _FETCH_ATTEMPTS:
                delay = self._backoff.delay(attempt, answer.retry_after_s, self._rng)
                await asyncio.sleep(delay)
        _log.warning(
            "reconcile: status of batch %s not had after %d attempts (%s %s); asking again later",
            receipt.batch_id,
            _FETCH_ATTEMPTS,
            answer.status,
            answer.error,
        )
        return answer

    def _verdicts(
        self, receipt: Receipt, answer: StatusAnswer, originals: list[Message]
    ) -> list[tuple[Message, Verdict, str | None]]:
        statuses = answer.batch.data if answer.batch is not None else []
        pairs, extra = match(originals, statuses)
        if extra:
            _log.warning(
                "reconcile: batch %s lists %d records not matched to its events",
                receipt.batch_id,
                extra,
            )
        given_up = self._wall_ms() >= receipt.sent_at_ms + self._give_up_ms
        verdicts = []
        for message, status in pairs:
            verdict = classify(status) if status is not None else Verdict("pending")
            if verdict.status == "pending" and given_up:
                why = verdict.message or answer.error or "not listed in the batch status"
                verdict = Verdict(
                    "failed", "unknown_status", f"no final status after the give-up time: {why}"
                )
            record_id = None if status is None or status.id is None else str(status.id)
            verdicts.append((message, verdict, record_id))
        return verdicts

    async def _report(
        self, receipt: Receipt, verdicts: list[tuple[Message, Verdict, str | None]]
    ) -> None:
        """1. dead letters for the failed records, 2. the outcome receipt for the final ones,
        3. a recheck receipt for the pending ones; each acknowledged before the next step."""
        failed = [(m, v) for m, v, _ in verdicts if v.status == "failed"]
        await asyncio.gather(*(self._dead_letter(m, v) for m, v in failed))
        final = [(m, v, i) for m, v, i in verdicts if v.status != "pending"]
        pending = [m for m, v, _ in verdicts if v.status == "pending"]
        if final:
            outcomes = [
                Outcome(
                    topic=m.topic() or "",
                    partition=m.partition() or 0,
                    offset=m.offset() or 0,
                    status="delivered" if v.status == "delivered" else "failed",
                    code=v.code,
                    message=v.message,
                    id=i,
                )
                for m, v, i in final
            ]
            await self._write(
                outcome_receipt(receipt, outcomes, sources_of(m for m, _, _ in final))
            )
            for _, verdict, _ in final:
                key = (verdict.status, verdict.code or "")
                self.counts.bump(self.counts.reconciled, key)
        if pending:
            attempt = receipt.attempt + 1
            wait_ms = int(min(_RECHECK_CAP_S * 1000, self._delay_ms * 2**attempt))
            check_at = min(self._wall_ms() + wait_ms, receipt.sent_at_ms + self._give_up_ms)
            await self._write(
                msgspec.structs.replace(
                    receipt,
                    kind="recheck",
                    records=len(pending),
                    sources=sources_of(pending),
                    outcomes=[],
                    check_at_ms=check_at,
                    attempt=attempt,
                )
            )
            self.counts.rechecks += len(pending)

    async def _dead_letter(self, message: Message, verdict: Verdict) -> None:
        code = verdict.code or "unknown_status"
        rejection = Rejection(
            code=code, field=None, message=verdict.message or CODES[code], stage="status"
        )
        await self._dlq_writes.write(lambda: self._dlq.send(message, rejection))
        self.counts.bump(self.counts.dead_lettered, (code, "status"))

    async def _write(self, receipt: Receipt) -> None:
        await self._receipt_writes.write(lambda: self._receipts.send(receipt))
