"""The delivery engine for unit tests: one builder (:func:`engine`), the :class:`Recorder` of its
outcomes, the records it sends (:func:`record`) and the aiohttp ``session`` fixture.

An engine sends to a URL (a sandbox's, over loopback HTTP, or one where nothing listens) on a
static ``TOKEN`` unless a test gives it ``tokens``, and its retries back off in milliseconds
(``FAST``). Record ``n`` is named at the sandbox by its receiver number, ``9198`` and ``n`` in
eight digits; its source handle is ``n`` too, by the tests' habit.

The fixture is not a plugin of ``tests/conftest.py``: a test module that wants it imports it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import aiohttp
import pytest

from stream.api import ApiClient
from stream.batching import Batch, Pending
from stream.delivery import Delivery
from stream.events import Record
from stream.retry import Backoff
from stream.secrets import Secret
from stream.tokens import StaticToken, Tokens
from stream.validation import Rejection
from stream.wire import Response, make_session
from tests.support.events import ACCOUNTS, LABEL
from tests.support.waiting import wait_until_async

__all__ = [
    "DEADLINE_S",
    "FAST",
    "LABEL",
    "TOKEN",
    "A",
    "B",
    "Recorder",
    "engine",
    "record",
    "session",
]

A, B = ACCOUNTS
TOKEN = "static-token-for-tests"
FAST = Backoff(base_s=0.01, cap_s=0.2)
DEADLINE_S = 60.0
"""How long a test waits for what it expects before it fails."""


def record(n: int, account: str = A, *, high: bool = False, label: str = LABEL) -> Record:
    """Record ``n``: its receiver number identifies it at the sandbox. Its window is open for the
    next hour."""
    now = int(time.time() * 1000)
    return Record(
        account=account,
        caller="918040001000",
        receiver=f"9198{n:08d}",
        label_id=label,
        label_name=None,
        call_reason=None,
        starts_at=now,
        ends_at=now + 3_600_000,
        high_priority=high,
    )


class Recorder:
    """The engine's outcomes, as the pipeline would see them."""

    def __init__(self) -> None:
        self.batches: list[tuple[Batch[int], Response, float]] = []
        self.dead: list[tuple[int, Rejection, int | None, bytes | None]] = []
        self.revoked: set[int] = set()
        """Sources whose partition a test revoked: no longer the engine's to send."""
        self.counted_out: list[int] = []

    @property
    def sources(self) -> list[int]:
        """The records delivered, by their source handle."""
        return [item.source for batch, _, _ in self.batches for item in batch.items]

    def resolved(self) -> int:
        return len(self.sources) + len(self.dead)

    async def until_resolved(self, count: int) -> None:
        """Wait until ``count`` records were delivered or dead-lettered."""
        await wait_until_async(
            lambda: self.resolved() == count, timeout_s=DEADLINE_S, what=f"{count} resolved"
        )

    def delivered(self, batch: Batch[int], response: Response) -> None:
        self.batches.append((batch, response, time.monotonic()))

    def owns(self, item: Pending[int]) -> bool:
        return item.source not in self.revoked

    def count_out(self, items: list[Pending[int]]) -> None:
        self.counted_out.extend(item.source for item in items)

    async def dead_letter(
        self, item: Pending[int], rejection: Rejection, status: int | None, body: bytes | None
    ) -> None:
        self.dead.append((item.source, rejection, status, body))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(timeout_s=10) as s:
        yield s


def engine(
    session: aiohttp.ClientSession,
    url: str,
    *,
    tokens: Tokens | None = None,
    version: Literal["v1", "v2"] = "v2",
    linger_s: float = 10.0,
    rate_limit_rps: float | None = 1000,
    backoff: Backoff = FAST,
    realtime_rps: float | None = None,
    wall_ms: Callable[[], int] | None = None,
    max_records: int = 500,
) -> tuple[Delivery[int], Recorder]:
    """A delivery engine that sends to ``url`` on ``tokens`` (default: ``TOKEN`` alone), and the
    recorder of its outcomes. The other arguments are ``Delivery``'s; ``wall_ms`` is its own
    default unless given. By default the real-time lane is off."""
    tokens = tokens or StaticToken(Secret(TOKEN))
    client = ApiClient(session, base_url=url, version=version, tokens=tokens)
    recorder = Recorder()
    options: dict[str, Any] = {} if wall_ms is None else {"wall_ms": wall_ms}
    delivery = Delivery(
        client=client,
        tokens=tokens,
        outcomes=recorder,
        version=version,
        linger_s=linger_s,
        max_records=max_records,
        rate_limit_rps=rate_limit_rps,
        backoff=backoff,
        realtime_rps=realtime_rps,
        **options,
    )
    return delivery, recorder
