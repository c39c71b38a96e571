"""The API stand-in (``stream.sandbox``) for tests: in the test's own event loop, or on a thread.

``sandbox_factory`` and ``sandbox`` serve from the test's loop, for tests that are coroutines and
talk to it with aiohttp. ``sandbox_thread`` serves from a loop of its own on a thread, so that
blocking test code and service processes can talk to it while the test reads its record directly;
it is the sandbox of every end-to-end test.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from stream.sandbox import Accepted, Clock, Sandbox, SandboxConfig

__all__ = [
    "TOKEN",
    "SandboxFactory",
    "SandboxThread",
    "sandbox",
    "sandbox_factory",
    "sandbox_thread",
]

T = TypeVar("T")

TOKEN = "integration-static-token"
"""The static token ``sandbox_thread`` accepts and ``service_factory`` sends."""

SandboxFactory = Callable[..., Awaitable[Sandbox]]


@pytest.fixture
async def sandbox_factory() -> AsyncIterator[SandboxFactory]:
    """``await sandbox_factory(config=None, clock=time)``: a started sandbox on a free loopback
    port (``.url``), stopped at teardown."""
    started: list[Sandbox] = []

    async def start(config: SandboxConfig | None = None, *, clock: Clock | None = None) -> Sandbox:
        sandbox = Sandbox(config) if clock is None else Sandbox(config, clock=clock)
        await sandbox.start()
        started.append(sandbox)
        return sandbox

    yield start
    for sandbox in started:
        await sandbox.stop()


@pytest.fixture
async def sandbox(sandbox_factory: SandboxFactory) -> Sandbox:
    """A started sandbox with the default configuration: any key mints a token, any label goes."""
    return await sandbox_factory()


class SandboxThread:
    """A ``Sandbox`` served from its own event loop in a thread; its state belongs to that loop, so
    read and change it through ``call`` and ``run``."""

    def __init__(self, config: SandboxConfig) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.sandbox = Sandbox(config)
        self.url = self.call(self.sandbox.start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def run(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the sandbox's loop."""

        async def wrapper() -> T:
            return fn()

        return self.call(wrapper())

    def accepted_receivers(self) -> Counter[str]:
        """Receiver → how many times a record for it was accepted."""
        return Counter(r.receiver for r in self.run(self.sandbox.accepted))

    def accepted_count(self) -> int:
        """Records accepted so far, duplicates included (cheap: a counter)."""
        return self.run(lambda: self.sandbox.stats().totals.records_accepted)

    def first_accepted(self) -> dict[str, Accepted]:
        """Receiver → its first acceptance (when it arrived, by which path)."""
        first: dict[str, Accepted] = {}
        for record in self.run(self.sandbox.accepted):
            first.setdefault(record.receiver, record)
        return first

    def batch_times(self) -> list[float]:
        """When each accepted batch arrived (monotonic seconds), in order."""
        first: dict[str, float] = {}
        for record in self.run(self.sandbox.accepted):
            first.setdefault(record.batch_id, record.received_monotonic_ms / 1000)
        return sorted(first.values())

    def set_faults(self, **changes: Any) -> None:
        self.run(lambda: self.sandbox.set_faults(**changes))

    def stop(self) -> None:
        self.call(self.sandbox.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def sandbox_thread() -> Iterator[Callable[..., SandboxThread]]:
    """``sandbox_thread(**SandboxConfig fields)``: a started ``SandboxThread``, stopped at
    teardown. It accepts ``TOKEN`` and 1000 requests a second unless told otherwise; any field may
    be set (quota, TLS, token lifetime, key pair, seed)."""
    started: list[SandboxThread] = []

    def start(**config: Any) -> SandboxThread:
        settings: dict[str, Any] = {"static_token": TOKEN, "rate_limit_rps": 1000}
        server = SandboxThread(SandboxConfig(**(settings | config)))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
