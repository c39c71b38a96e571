"""Where a record's journey ends (docs/design.md#at-least-once): accepted by the API, or written to
the dead-letter topic and acknowledged, and only then finished (its offset committable).

``Finisher`` is the delivery engine's and the label gate's ``Outcomes``: it writes the receipts and
the dead letters (each until Kafka acknowledges it, ``stream.retry.AckedWriter``), marks records
finished in the ``OffsetTracker``, counts them out for backpressure, and wakes a drain that waits
for them. A dead letter the topic refuses for a reason no retry cures blocks its partition loudly
(docs/design.md#bounded-progress) until it is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from confluent_kafka import Message
from msgspec import Struct

from stream.api import refused_field
from stream.batching import Batch, Pending
from stream.delivery import Delivery, api_rejection
from stream.dlq import DeadLetterProducer
from stream.errors import DeadLetterError, ReceiptError
from stream.labels import Probe
from stream.metrics import Counts
from stream.offsets import OffsetTracker, Ticket, TopicPartitionKey
from stream.receipts import Receipt, Receipts, offset_ranges
from stream.retry import AckedWriter, Backoff
from stream.validation import Rejection
from stream.wire import Response

__all__ = ["UNKNOWN_LABEL", "Finisher", "Source"]

_log = logging.getLogger("stream.app")

_ANSWERED_POLL_S = 0.05
"""A revoke looks this often whether the requests on their way were answered (a retried request
finishes nothing, so no progress wakes it)."""


class Source(Struct, frozen=True, gc=False):
    """What the pipeline keeps with each record: its offset claim and the original message (DLQ).

    One per record, hence ``gc=False`` (docs/design.md#the-hot-path).
    """

    ticket: Ticket
    message: Message


UNKNOWN_LABEL = Rejection(
    code="unknown_label",
    field="label_id",
    message="label_id is not a dynamic label of the account",
    stage="validate",
)


class Finisher:
    """Finishes records: delivered (a receipt, when receipts are on) or dead-lettered."""

    def __init__(
        self,
        tracker: OffsetTracker,
        counts: Counts,
        *,
        dlq: DeadLetterProducer,
        receipts: Receipts | None,
        reconciling: bool,
        high_topics: Collection[str],
        backoff: Backoff,
        rng: Any,
        wall_ms: Callable[[], int],
    ) -> None:
        """``reconciling``: a receipt is the reconciler's only memory of its batch, so its records
        finish once Kafka has it (docs/design.md#reconciliation); otherwise receipts are published
        without waiting."""
        self.tracker = tracker
        self.counts = counts
        self._dlq = dlq
        self._receipts = receipts
        self._reconciling = reconciling
        self._high_topics = high_topics
        self._wall_ms = wall_ms
        self.dlq_writes = AckedWriter(
            DeadLetterError,
            what="dead-letter writes",
            backoff=backoff,
            rng=rng,
            log=_log,
            count=self._dlq_write_failed,
            context=self._blocked_note,
        )
        self.receipt_writes = AckedWriter(
            ReceiptError, what="receipt writes", backoff=backoff, rng=rng, log=_log
        )
        self.delivery: Delivery[Source] | None = None
        """Set once built: probes go through it."""
        self.finished = 0
        """Records delivered or dead-lettered since start; the consumer thread reads it."""
        self.finished_high = 0
        """Of those, the records of high-priority topics (their own backpressure bound)."""
        self._progress = asyncio.Event()
        """Set whenever records finish; the bounded waits for draining listen to it."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.dlq_blocked: dict[TopicPartitionKey, int] = {}
        """Per partition, records whose dead letter Kafka refuses until an operator acts
        (docs/dlq.md#writing)."""
        self._blocked_by = ""
        """The latest such refusal, for ``/readyz``."""

    def __repr__(self) -> str:
        return f"Finisher(finished={self.finished}, writing={len(self._tasks)})"

    # -- finishing -------------------------------------------------------------------------------

    def finish(self, tickets: Collection[Ticket], *, unowned: int = 0, high: bool = False) -> None:
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

    def owns(self, item: Pending[Source]) -> bool:
        return item.source.ticket.run.live

    def count_out(self, items: list[Pending[Source]]) -> None:
        high_topics = self._high_topics
        high = sum(1 for i in items if i.source.ticket.tp[0] in high_topics) if high_topics else 0
        self.finished += len(items)
        self.finished_high += high
        self._progress.set()

    async def wait_answered(self, deadline: float, sending: Callable[[], bool]) -> bool:
        """Wait (until the loop's ``deadline``) while ``sending()`` says requests carrying records
        of partitions being revoked are on their way, or writes (dead letters, receipts) are;
        whether they all were answered (docs/design.md#consumer)."""
        loop = asyncio.get_running_loop()
        while (sending() or self._tasks) and loop.time() < deadline:
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._progress.wait(), min(_ANSWERED_POLL_S, deadline - loop.time())
                )
        return not (sending() or self._tasks)

    async def wait_finished(self, tps: list[TopicPartitionKey] | None, deadline: float) -> bool:
        """Wait (until the loop's ``deadline``) for every record of ``tps`` (None: of all) to
        finish; whether they did."""
        loop = asyncio.get_running_loop()
        while self.tracker.unfinished(tps) and loop.time() < deadline:
            self._progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), deadline - loop.time())
        return self.tracker.unfinished(tps) == 0

    def stop_writing(self) -> None:
        """The stop: writes not yet acknowledged stay unfinished (their records are read again)."""
        for task in self._tasks:
            task.cancel()

    # -- outcomes (called by Delivery) -----------------------------------------------------------

    def delivered(self, batch: Batch[Source], response: Response) -> None:
        tickets = [item.source.ticket for item in batch.items]
        records = len(batch.items)
        delivered = self.counts.delivered
        delivered[batch.account] = delivered.get(batch.account, 0) + records
        if self._receipts is None:
            self.finish(tickets)
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
        if self._reconciling:
            self.spawn(self._write_receipt(tickets, self._receipts, receipt))
        else:
            self.finish(tickets)
            self._receipts.publish(receipt)

    async def _write_receipt(
        self, tickets: list[Ticket], receipts: Receipts, receipt: Receipt
    ) -> None:
        await self.receipt_writes.write(lambda: receipts.send(receipt))
        self.finish(tickets)

    async def dead_letter(
        self,
        item: Pending[Source],
        rejection: Rejection,
        status: int | None,
        body: bytes | None,
    ) -> None:
        await self.write_dead_letter(item.source, rejection, status, body)

    async def write_dead_letter(
        self, source: Source, rejection: Rejection, status: int | None, body: bytes | None
    ) -> None:
        """Write to the DLQ until Kafka acknowledges it; only then is the record finished. While it
        fails, the partition's position cannot pass this record (docs/design.md#at-least-once);
        a refusal no retry cures (``DeadLetterError.permanent``) blocks the partition loudly until
        it is written (docs/design.md#bounded-progress). Once the partition is no longer ours, its
        next owner reads the record again and writes the letter: this one stops trying."""
        dlq = self._dlq
        ticket, message = source.ticket, source.message
        blocked = False

        def refused(exc: DeadLetterError) -> None:
            nonlocal blocked
            if exc.permanent:
                self._blocked_by = exc.reason
                if not blocked:
                    blocked = True
                    self.dlq_blocked[ticket.tp] = self.dlq_blocked.get(ticket.tp, 0) + 1

        try:
            letter = await self.dlq_writes.write(
                lambda: dlq.send(message, rejection, http_status=status, http_body=body),
                ours=lambda: self.tracker.tracks(ticket.run),
                refused=refused,
            )
        finally:
            if blocked:
                self._unblock(ticket.tp)
        self.finish((ticket,))
        if letter is not None:
            self.counts.bump(self.counts.dead_lettered, (rejection.code, rejection.stage))
            self.counts.dlq_truncated += 1 if letter.cut else 0

    def reject(self, source: Source, rejection: Rejection) -> None:
        """A record refused before it was sent (decode, validation): dead-letter it."""
        self.spawn(self.write_dead_letter(source, rejection, None, None))

    def blocked(self) -> str | None:
        """Why ``/readyz`` fails for the dead letters, if it does (docs/dlq.md#writing)."""
        if not self.dlq_blocked:
            return None
        return (
            f"dead letters cannot be written to {self._dlq.topic}: {self._blocked_by}; "
            f"{sum(self.dlq_blocked.values())} records on {len(self.dlq_blocked)} partitions "
            f"wait, and those partitions commit no further"
        )

    def _unblock(self, tp: TopicPartitionKey) -> None:
        left = self.dlq_blocked[tp] - 1
        if left:
            self.dlq_blocked[tp] = left
        else:
            del self.dlq_blocked[tp]

    def _dlq_write_failed(self) -> None:
        self.counts.dlq_write_failures += 1

    def _blocked_note(self) -> str:
        """What the dead-letter error line adds while the topic refuses letters for good."""
        if not self.dlq_blocked:
            return ""
        partitions = ", ".join(f"{t}[{p}]" for t, p in sorted(self.dlq_blocked))
        return (
            f"; the topic {self._dlq.topic} refuses it until an operator acts: "
            f"{sum(self.dlq_blocked.values())} records on partitions {partitions} wait, and their "
            "commits stop"
        )

    # -- labels (called by LabelGate) ---------------------------------------------------------

    def unknown_label(self, item: Pending[Source]) -> None:
        self.spawn(self.write_dead_letter(item.source, UNKNOWN_LABEL, None, None))

    async def probe(self, item: Pending[Source]) -> Probe:
        """Send one record whose label the registry could not confirm; dead-letter it if refused."""
        assert self.delivery is not None
        response = await self.delivery.probe(item)
        if response is None:
            return "gone"
        if response.kind == "ok":
            return "accepted"
        # Only a refusal that names the label id as its field is one of the label: a message that
        # mentions "label" may be about anything (docs/design.md#labels).
        if refused_field(response.body) == "label_id":
            await self.write_dead_letter(item.source, UNKNOWN_LABEL, response.status, response.body)
            return "label_refused"
        rejection = api_rejection(response.status)
        await self.write_dead_letter(item.source, rejection, response.status, response.body)
        return "record_refused"

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
