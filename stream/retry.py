"""How failures are retried: the backoff every retry waits (docs/design.md#retry), and the one loop
that writes to Kafka until it acknowledged the write (docs/design.md#at-least-once).

A dead letter, and with reconciliation on a receipt, is what lets a record finish, and an outcome
or recheck receipt is what lets the reconciler finish a receipt: none may be dropped. So each is
written by ``AckedWriter.write``, which retries the write with the backoff for as long as it takes,
and gives up only when the record is no longer ours (its partition moved to another owner, which
reads it again and writes it itself). While Kafka refuses, every stuck write retries: the failures
are counted, one by one, and logged at most once per ``LOG_EVERY_S``, not once per retry.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["LOG_EVERY_S", "AckedWriter", "Backoff"]

E = TypeVar("E", bound=Exception)
T = TypeVar("T")

LOG_EVERY_S = 5.0
"""Failed writes of one kind are logged at most this often (each line counts them all)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Capped exponential backoff with full jitter, never shorter than a ``Retry-After``."""

    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        jittered = rng.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))
        return max(jittered, retry_after_s or 0.0)


def _always() -> bool:
    return True


def _nothing() -> None:
    pass


class AckedWriter(Generic[E]):
    """Writes of one kind (``what``: "dead-letter writes"), each retried until Kafka acknowledged
    it. A failed write raises ``failure`` (``DeadLetterError``, ``ReceiptError``); anything else
    is not a refusal of Kafka's and goes up to the caller."""

    failures: int
    """Writes of this kind Kafka did not acknowledge so far (each one retried)."""

    def __init__(
        self,
        failure: type[E],
        *,
        what: str,
        backoff: Backoff,
        rng: random.Random,
        log: logging.Logger,
        count: Callable[[], None] = _nothing,
        context: Callable[[], str] = str,
        log_every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._failure = failure
        self._what = what
        self._backoff = backoff
        self._rng = rng
        self._log = log
        self._count = count
        """Called once per failure: the service's counter of them (``dcr_dlq_write_failures``)."""
        self._context = context
        """What the error line adds about the state the failures left (partitions blocked)."""
        self._log_every_s = log_every_s
        self._clock = clock
        self._logged_at = -math.inf
        self.failures = 0

    def __repr__(self) -> str:
        return f"AckedWriter(what={self._what!r}, failures={self.failures})"

    async def write(
        self,
        send: Callable[[], Awaitable[T]],
        *,
        ours: Callable[[], bool] = _always,
        refused: Callable[[E], None] | None = None,
    ) -> T | None:
        """``await send()`` until it returns, the backoff between attempts; return what it
        returned, or None once a failure finds that ``ours()`` no longer holds (the write is the
        next owner's now). ``refused`` hears each failure while the write is still ours, before
        the wait (a dead letter the topic refuses for good blocks its partition meanwhile)."""
        attempt = 0
        while True:
            try:
                return await send()
            except self._failure as exc:
                attempt += 1
                self.failures += 1
                self._count()
                if not ours():
                    return None
                if refused is not None:
                    refused(exc)
                delay = self._backoff.delay(attempt, None, self._rng)
                self._log_failure(exc, attempt, delay)
                await asyncio.sleep(delay)

    def _log_failure(self, exc: E, attempt: int, delay: float) -> None:
        """One error line per ``log_every_s`` at most: while Kafka refuses, every stuck write
        retries, and a line per retry would flood the logs (``failures`` counts them all)."""
        now = self._clock()
        if now - self._logged_at < self._log_every_s:
            return
        self._logged_at = now
        self._log.error(
            "%s; retry %d in %.1f s (%d %s failed so far)%s",
            exc,
            attempt,
            delay,
            self.failures,
            self._what,
            self._context(),
        )
