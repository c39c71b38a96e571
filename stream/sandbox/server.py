"""The ``Sandbox``: the server's life (start, stop, TLS), its Python control API, and ``serve``.

The control API only delegates to the ``State`` the request handlers share (``api``, ``control``),
so a test that calls ``set_faults`` and a curl to ``/_sandbox/faults`` do the same thing.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
import time
from collections.abc import Iterable, KeysView
from typing import Any

from aiohttp import web

from stream import logs
from stream.sandbox import api, control
from stream.sandbox.batches import Accepted
from stream.sandbox.clock import Clock
from stream.sandbox.config import SandboxConfig
from stream.sandbox.faults import Faults
from stream.sandbox.ledger import Stats
from stream.sandbox.state import State
from stream.sandbox.statuses import StatusRules

__all__ = ["Sandbox", "serve"]

_SHUTDOWN_TIMEOUT_S = 1.0
"""In-flight answers (held back by injected latency) get this long on stop: a sandbox holds nothing
worth waiting for, and SIGTERM must end it well inside Kubernetes' 30 s grace."""

_log = logging.getLogger(__name__)


class Sandbox:
    """The API stand-in: ``async with Sandbox(config) as sandbox`` serves on ``sandbox.url``."""

    config: SandboxConfig
    _state: State

    def __init__(self, config: SandboxConfig | None = None, *, clock: Clock = time) -> None:
        self.config = config or SandboxConfig()
        self._state = State(self.config, clock)
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    def __repr__(self) -> str:
        return f"Sandbox(url={self._url!r}, config={self.config!r})"

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``http(s)://host:port`` once started: the base URL for ``DCR_API_BASE_URL``."""
        if self._url is None:
            raise RuntimeError("the sandbox is not started")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: a free port) and return the URL."""
        if self._runner is not None:
            raise RuntimeError("the sandbox is already started")
        app = web.Application()
        app.add_routes([*api.routes(self._state), *control.routes(self._state)])
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            tls = self._tls_context()
            await web.TCPSite(runner, host, port, ssl_context=tls).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        # A wildcard address is not somewhere to send requests; loopback reaches it from here.
        shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self._url = f"{'https' if tls else 'http'}://{shown}:{runner.addresses[0][1]}"
        return self._url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._url = None

    def reset(self) -> None:
        """Back to the start: no records, counters or tokens; the configured faults and labels."""
        self._state.reset()

    @property
    def faults(self) -> Faults:
        """The faults now in force; bursts count down as requests use them."""
        return self._state.faults.current

    def set_faults(self, **changes: Any) -> Faults:
        """Change the named faults, keep the others; a bad name or value raises ``ValueError``."""
        return self._state.faults.set(**changes)

    @property
    def statuses(self) -> StatusRules:
        """The batch status rules in force."""
        return self._state.statuses

    def set_statuses(self, **changes: Any) -> StatusRules:
        """Change the named batch status rules, keep the others; a bad one raises ``ValueError``."""
        self._state.statuses = self._state.statuses.changed(**changes)
        return self._state.statuses

    def learn_labels(self, account: str, label_ids: Iterable[str]) -> frozenset[str]:
        """Add label ids to those ``account`` knows (as if created in the console now); returns
        all it knows now."""
        return self._state.rules.learn_labels(account, label_ids, self._state.clock.time())

    def forget_labels(self, account: str, label_ids: Iterable[str]) -> frozenset[str]:
        """Delete labels of ``account`` (as if in the console now); returns all it knows now."""
        return self._state.rules.forget_labels(account, label_ids, self._state.clock.time())

    def accepted(self, account: str | None = None) -> list[Accepted]:
        """Every accepted record (of ``account``), in arrival order."""
        return self._state.ledger.accepted(account)

    def stats(self) -> Stats:
        return self._state.stats()

    @property
    def _tokens(self) -> KeysView[str]:
        # tests/integration/test_operations.py and tests/faults/test_security.py read the minted
        # tokens here, to check that no log shows one.
        return self._state.rules.tokens

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.config.tls_cert is None or self.config.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context


def serve(config: SandboxConfig, *, host: str, port: int, log_requests: bool = False) -> int:
    """Run a sandbox in this process until SIGINT or SIGTERM; its URL is stdout's first line."""
    logs.setup("DEBUG" if log_requests else "INFO")
    # Only the sandbox's own DEBUG lines are wanted.
    for noisy in ("asyncio", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return asyncio.run(_serve(config, host, port))


async def _serve(config: SandboxConfig, host: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sandbox = Sandbox(config)
    try:
        url = await sandbox.start(host, port)
    except OSError as exc:
        print(f"dcr-stream sandbox: cannot serve on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    print(url, flush=True)
    _log.info("sandbox serving on %s with %r", url, config)
    try:
        await stop.wait()
    finally:
        await sandbox.stop()
    _log.info("sandbox stopped: %s", sandbox.stats().totals)
    return 0
