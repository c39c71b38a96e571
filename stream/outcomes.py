"""What the API's answer to a request comes to, for both engines (docs/design.md#retry).

Records leave the engines through the caller's :class:`Outcomes`: each one exactly once, as
``delivered`` (in a request the API accepted) or ``dead_letter``. Every request either engine sends
(a batch, ``stream.delivery``; one urgent record, ``stream.realtime``) comes back to
:meth:`Answers.answer` with its :class:`~stream.wire.Response`, and each rule is written there once:

- ``ok``: the pace it was sent under ends its row of 429s, and its records are delivered.
- ``reject`` (400/413/422): a lone record is dead-lettered (``api_rejected``, with the status and
  body), a batch is bisected (docs/design.md#rejection); a probe's caller gets the answer instead.
- ``auth``, a 401 or the request's first 403: its token is refused (``TokenPool.refused``: a minted
  one is replaced) and the request goes back to the front of its lane at once
  (docs/design.md#auth). A second 403 is retried like a 5xx.
- 429: only the pace it was sent under backs off (``Retry-After``, or capped exponential backoff),
  and the request goes back to the front at once, for the next token.
- anything else: retried after a capped, fully jittered exponential backoff, never shorter than
  ``Retry-After``, for as long as it takes. So is a request that raised, or that could not go out
  for want of a token.

What differs between the engines, each says in its :class:`Request`: which pace a 429 backs off,
how a refusal is split, what an accepted request delivers, and (its :class:`Path`) the labels and
words of its metrics and log lines.
"""

from __future__ import annotations

import asyncio
import logging
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from stream.batching import Batch, Pending
from stream.held import Held
from stream.metrics import Metrics, status_class
from stream.pacing import Pace
from stream.pool import TokenPool
from stream.retry import Backoff
from stream.validation import Rejection
from stream.wire import Response

__all__ = [
    "AUTH_REFUSED",
    "BATCH",
    "REALTIME",
    "Answers",
    "Outcomes",
    "Path",
    "Queue",
    "Request",
    "Tries",
    "api_rejection",
]

S = TypeVar("S")
T = TypeVar("T", bound="Tries")
Q = TypeVar("Q", contravariant=True)
_log = logging.getLogger("stream.delivery")
"""The delivery engine's logger, whichever of its modules logs (operators filter on it)."""


class Outcomes(Protocol[S]):
    """Where records leave the engines; ``dead_letter`` returns once Kafka acknowledged it."""

    def delivered(self, batch: Batch[S], response: Response) -> None: ...

    def owns(self, item: Pending[S]) -> bool:
        """Whether the record's partition is still this process's (not being revoked, not lost):
        only then may it be sent."""
        ...

    def count_out(self, items: list[Pending[S]]) -> None:
        """Records no longer this process's leave without finishing (the next owner reads them)."""
        ...

    async def dead_letter(
        self, item: Pending[S], rejection: Rejection, status: int | None, body: bytes | None
    ) -> None: ...


AUTH_REFUSED = Rejection(
    code="auth_refused",
    field=None,
    message="the account's credentials have been refused for DCR_AUTH_GIVE_UP_S (the token "
    "endpoint refused its key, or no configured credential covers it)",
    stage="api",
)
"""Why the records of an account given up on are dead-lettered (docs/design.md#auth)."""


def api_rejection(status: int) -> Rejection:
    """Why a record the API refused on its own (400/413/422) is dead-lettered."""
    return Rejection(
        code="api_rejected",
        field=None,
        message=f"the API answered {status} for this record",
        stage="api",
    )


@dataclass(frozen=True, slots=True)
class Path:
    """An engine's requests as metrics and logs name them."""

    name: Literal["batch", "realtime"]
    """The ``path`` label of ``dcr_path_*`` and ``dcr_consume_to_accept_seconds``."""
    cause: str
    """The ``cause`` label of ``dcr_api_throttled_by_total`` for its 429s."""
    subject: str
    """What a log line says failed: ``request``, ``record``."""
    carries: str
    """What one request carries: ``batch``, ``record``."""
    backs_off: str
    """What a 429 backs off, as a log line says it."""


BATCH = Path("batch", cause="request", subject="request", carries="batch", backs_off="it")
REALTIME = Path(
    "realtime",
    cause="realtime",
    subject="record",
    carries="record",
    backs_off="its real-time pace",
)


class Tries(Protocol):
    """What a request remembers between its attempts (``Batch``, ``Urgent``)."""

    attempt: int
    """Transient failures so far; drives the backoff."""
    auth_403: bool
    """A 403 was already answered with a fresh token once."""


class Queue(Protocol[Q]):
    """Where a request waits for a slot (``stream.lanes.Lane``, ``RealtimeLane``)."""

    def put(self, queued: Q, /, *, front: bool = ...) -> None: ...


@dataclass(slots=True)
class Request(ABC, Generic[S, T]):
    """One attempt of a request, as the rules see it; each engine says in a subclass what the rules
    do to its own."""

    path: ClassVar[Path]
    queued: T
    """What waits in the lane between attempts (a ``Batch``, an ``Urgent``), and remembers them."""
    lane: Queue[T]
    pool: TokenPool
    """The account's tokens: the one it was sent on among them."""
    answers: Answers[S]

    @property
    @abstractmethod
    def account(self) -> str: ...

    @property
    @abstractmethod
    def items(self) -> list[Pending[S]]:
        """The records it carries."""

    def requeue(self) -> None:
        """Back to the front of its lane: it goes with the next slot."""
        self.lane.put(self.queued, front=True)

    @abstractmethod
    def throttle(self, held: Held, pace: Pace, now: float, retry_after_s: float | None) -> float:
        """A 429 on ``held``: back off the pace it was sent under; return for how long."""

    @abstractmethod
    def delivered(self, response: Response) -> None:
        """A 2xx: its records leave as delivered (``Answers.delivered``)."""

    @abstractmethod
    async def refused(self, response: Response) -> None:
        """A 400/413/422."""


class Answers(Generic[S]):
    """The rules both engines apply to an answer, and the tasks they leave behind (sends, retries
    waiting out their backoff, dead letters on their way)."""

    def __init__(
        self, *, outcomes: Outcomes[S], metrics: Metrics, backoff: Backoff, rng: random.Random
    ) -> None:
        self.outcomes = outcomes
        self.metrics = metrics
        self.backoff = backoff
        self.rng = rng
        self.tasks: set[asyncio.Task[None]] = set()
        """Running; ``Delivery.close`` cancels them."""
        self._sending: dict[int, Request[S, Any]] = {}
        """The requests on their way, until their answer is acted on."""
        self._counts = metrics.counts
        self._accept_s = {
            path.name: metrics.consume_to_accept.labels(path.name) for path in (BATCH, REALTIME)
        }

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def dead_letter_soon(self, item: Pending[S], rejection: Rejection) -> None:
        """Dead-letter ``item``, which never got an answer, in a task of its own."""
        self.spawn(self.outcomes.dead_letter(item, rejection, None, None))

    def send(self, request: Request[S, Any], send: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Send ``request`` with ``send``, in a task of its own."""
        self.spawn(self._guarded(request, send))

    def owned(self, items: list[Pending[S]]) -> list[Pending[S]]:
        """``items`` still this process's to send; the others (their partition is being revoked,
        or was lost) are counted out, unsent (docs/design.md#consumer)."""
        owns = self.outcomes.owns
        if all(map(owns, items)):
            return items  # the usual case: one pass, no list built
        kept: list[Pending[S]] = []
        gone: list[Pending[S]] = []
        for item in items:
            (kept if owns(item) else gone).append(item)
        self.outcomes.count_out(gone)
        return kept

    def sending_unowned(self) -> bool:
        """Whether a request on its way carries records that are no longer this process's: a
        revoke waits for their answers."""
        owns = self.outcomes.owns
        return any(not owns(i) for r in self._sending.values() for i in r.items)

    async def answer(
        self, request: Request[S, Any], held: Held, pace: Pace, response: Response
    ) -> None:
        """Count the answer to ``request``, sent on ``held`` under ``pace``, and act on it."""
        counts, status = self._counts, status_class(response.status)
        counts.bump(counts.requests, (request.account, status))
        counts.bump(counts.path_requests, (request.path.name, status))
        kind = response.kind
        tries = request.queued
        if kind == "ok":
            pace.accepted()
            request.delivered(response)
        elif kind == "reject":
            await request.refused(response)
        elif kind == "auth" and not (tries.auth_403 and response.status == 403):
            tries.auth_403 = response.status == 403  # a 403 is answered with a fresh token once
            request.pool.refused(held, asyncio.get_running_loop().time())
            request.requeue()
        elif response.status == 429:
            self._throttled(request, held, pace, response)
        else:
            self.retry_later(request, response)

    def delivered(self, path: Path, batch: Batch[S], response: Response) -> None:
        paths = self._counts.path_records
        paths[path.name] = paths.get(path.name, 0) + len(batch.items)
        self._accept_s[path.name].observe(asyncio.get_running_loop().time() - batch.opened_at)
        self.outcomes.delivered(batch, response)

    async def rejected(self, item: Pending[S], response: Response) -> None:
        """A record the API refused on its own: dead-lettered with the answer's status and body."""
        rejection = api_rejection(response.status)
        await self.outcomes.dead_letter(item, rejection, response.status, response.body)

    async def _guarded(
        self, request: Request[S, Any], send: Callable[[], Coroutine[Any, Any, None]]
    ) -> None:
        key = id(request)
        self._sending[key] = request
        try:
            await send()
        except Exception as exc:  # a bug must not strand a request: its offsets would never commit
            path = request.path
            _log.exception("sending a %s for account %s failed", path.carries, request.account)
            self.retry_later(request, Response(status=0, error=type(exc).__name__))
        finally:
            del self._sending[key]

    def _throttled(
        self, request: Request[S, Any], held: Held, pace: Pace, response: Response
    ) -> None:
        """A 429 costs only the request it refused: the pace it went under backs off, and it goes
        back to the front at once, for the next token (docs/design.md#retry)."""
        counts = self._counts
        counts.retries += 1
        counts.throttled += 1
        path = request.path
        counts.bump(counts.throttled_by, (request.account, path.cause))
        now = asyncio.get_running_loop().time()
        delay = request.throttle(held, pace, now, response.retry_after_s)
        _log.warning(
            "%s for account %s answered 429 on token %d; %s backs off %.2f s, the %s goes to the "
            "next token",
            path.subject,
            request.account,
            held.index,
            path.backs_off,
            delay,
            path.carries,
        )
        request.requeue()

    def retry_later(self, request: Request[S, Any], response: Response) -> None:
        """Back to the front of its lane after a backoff that grows with its failures."""
        tries = request.queued
        tries.attempt += 1
        self._counts.retries += 1
        delay = self.backoff.delay(tries.attempt, response.retry_after_s, self.rng)
        _log.warning(
            "%s for account %s failed (%s); retry %d in %.2f s",
            request.path.subject,
            request.account,
            response.status or response.error,
            tries.attempt,
            delay,
        )
        self.spawn(_later(delay, request.requeue))


async def _later(delay: float, requeue: Callable[[], None]) -> None:
    await asyncio.sleep(delay)
    requeue()
