"""``dcr-stream sandbox``: a stand-in for Truecaller's Dynamic Call Records API (SPEC §2, §8).

It serves the documented endpoints (v1 and v2 batches, token minting) under the documented rules:
batches checked by ``stream.sandbox.batches`` (at most 500 records, every record by
``stream.validation``), at most 10 tokens minted per 30 minutes, and a per-account request quota
answered with 429. Faults are injected on purpose (random and burst 5xx, 429 bursts, latency and its
spikes, outages that answer 503 or cut the connection) and can be changed while it runs, through
``/_sandbox/*`` or the Python API that tests, the demo and the benchmarks use::

    async with Sandbox(SandboxConfig(labels={account: frozenset({label_id})})) as sandbox:
        ...  # point the client at sandbox.url
        assert sandbox.stats().totals.records_accepted == 500

Time comes from an injectable ``Clock`` (``ManualClock`` in tests): token expiry, the quota window,
the mint limit, outage windows, the expiry rule and receive times all read it; injected latency is
real time. Account ids are compared lower-cased, as UUIDs are (``stream.validation`` does the same).
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import ssl
import sys
import time
from collections.abc import Iterable, KeysView, Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web
from msgspec import Struct

from stream import logs
from stream.sandbox.batches import MAX_RECORDS, Accepted, Refusal, Version, check_batch
from stream.sandbox.clock import Clock, ManualClock
from stream.sandbox.config import SandboxConfig, parse_labels
from stream.sandbox.faults import Faults, Outage
from stream.sandbox.ledger import AccountStats, Stats
from stream.sandbox.rules import Throttled
from stream.sandbox.state import State

__all__ = [
    "MAX_RECORDS",
    "Accepted",
    "AccountStats",
    "Clock",
    "Faults",
    "ManualClock",
    "Sandbox",
    "SandboxConfig",
    "Stats",
    "parse_labels",
    "serve",
]

_SHUTDOWN_TIMEOUT_S = 1.0
"""In-flight answers (held back by injected latency) get this long on stop: a sandbox holds nothing
worth waiting for, and SIGTERM must end it well inside Kubernetes' 30 s grace."""

_log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()


class _KeyPair(Struct):
    key_id: str
    api_key: str


class _LearnLabels(Struct, forbid_unknown_fields=True):
    account: str
    label_ids: list[str]


def _json(status: int, body: object, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=_encoder.encode(body), content_type="application/json", headers=headers
    )


def _error(status: int, slug: str, message: str) -> web.Response:
    return _json(status, {"slug": slug, "message": message})


def _throttled(message: str, retry_after_s: float | None) -> web.Response:
    headers = None if retry_after_s is None else {"Retry-After": str(math.ceil(retry_after_s))}
    return _json(429, {"slug": "too_many_requests", "message": message}, headers)


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
        app.add_routes(
            [
                web.post("/clients/{account}/dynamic_call_records", self._batch_v1),
                web.post("/v2/clients/{account}/dynamic_call_records", self._batch_v2),
                web.post("/clients/{account}/token", self._token),
                web.get("/_sandbox/stats", self._get_stats),
                web.get("/_sandbox/accepted", self._get_accepted),
                web.get("/_sandbox/faults", self._get_faults),
                web.post("/_sandbox/faults", self._post_faults),
                web.get("/_sandbox/labels", self._get_labels),
                web.post("/_sandbox/labels", self._post_labels),
                web.post("/_sandbox/reset", self._post_reset),
            ]
        )
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

    def learn_labels(self, account: str, label_ids: Iterable[str]) -> frozenset[str]:
        """Add label ids to those ``account`` knows; returns all it knows now."""
        return self._state.rules.learn_labels(account, label_ids)

    def accepted(self, account: str | None = None) -> list[Accepted]:
        """Every accepted record (of ``account``), in arrival order."""
        return self._state.ledger.accepted(account)

    def stats(self) -> Stats:
        return self._state.ledger.stats()

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

    async def _batch_v1(self, request: web.Request) -> web.StreamResponse:
        return await self._batch(request, "v1")

    async def _batch_v2(self, request: web.Request) -> web.StreamResponse:
        return await self._batch(request, "v2")

    async def _batch(self, request: web.Request, version: Version) -> web.StreamResponse:
        state = self._state
        account = request.match_info["account"].lower()
        counters = state.ledger.counters(account)
        outage = state.faults.outage()
        if outage == "drop":
            counters.requests["dropped"] += 1
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)  # never sent: the connection is gone
        response = await self._answer(request, account, version, outage)
        counters.requests[str(response.status)] += 1
        if response.status != 200:
            _log.debug("%s batch for %s answered %d", version, account, response.status)
        if delay_s := state.faults.delay_s():
            await asyncio.sleep(delay_s)
        return response

    async def _answer(
        self, request: web.Request, account: str, version: Version, outage: Outage
    ) -> web.Response:
        """Answer a batch request; the first of these that applies decides:

        1. an outage in ``503`` mode: 503;
        2. no valid token for this account: 401;
        3. over the quota: 429 (it does not count against the quota);
        4. a 429 burst, then a 5xx burst, then the random error rate;
        5. not ``application/json``: 415;
        6. a refused batch (``check_batch``): 400 or 413;
        7. otherwise the records are recorded: 200.

        Nothing is recorded unless the answer is 200. Injected latency comes after this, so a
        client that times out and retries delivers the batch twice, as it would against the real
        API. The receive time is taken before the body is read.
        """
        state = self._state
        received_ms = int(state.clock.time() * 1000)
        now = state.clock.monotonic()
        if outage == "503":
            return _error(503, "service_unavailable", "the sandbox is in an injected outage")
        if not state.rules.authorised(account, _bearer(request), now):
            return _error(401, "unauthorized", "missing, unknown or expired bearer token")
        if (throttled := state.rules.admit(account, now)) is not None:
            return _throttled(*throttled)
        if (injected := state.faults.inject()) is not None:
            if injected.status == 429:
                return _throttled(injected.message, injected.retry_after_s)
            return _error(injected.status, "server_error", injected.message)
        if request.content_type != "application/json":
            return _error(415, "unsupported_media_type", "Content-Type must be application/json")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            return _json(413, {"field": "call_records", "message": exc.text, "status": 413})
        batch = check_batch(
            body,
            account=account,
            version=version,
            labels=state.rules.labels.get(account),
            now_ms=int(state.clock.time() * 1000),
            received_ms=received_ms,
            received_monotonic_ms=now * 1000,
        )
        if isinstance(batch, Refusal):
            return _json(batch.status, batch.body)
        state.ledger.keep(batch)
        _log.debug(
            "%s batch %s for %s: %d records accepted (received_ms=%d, received_monotonic_ms=%.3f)",
            version,
            batch.batch_id,
            account,
            batch.size,
            batch.received_ms,
            batch.received_monotonic_ms,
        )
        return _json(200, {"batch_id": batch.batch_id} if version == "v2" else {})

    async def _token(self, request: web.Request) -> web.Response:
        account = request.match_info["account"].lower()
        counters = self._state.ledger.counters(account)
        response = await self._mint(request, account)
        counters.tokens[str(response.status)] += 1
        return response

    async def _mint(self, request: web.Request, account: str) -> web.Response:
        if request.headers.get("X-Public-Access", "").lower() != "allow":
            return _error(401, "unauthorized", "the token endpoint needs X-Public-Access: allow")
        try:
            pair = msgspec.json.decode(await request.read(), type=_KeyPair)
        except msgspec.DecodeError as exc:
            return _error(400, "bad_request", f"the body must be {{key_id, api_key}}: {exc}")
        state = self._state
        if not state.rules.key_pair_ok(pair.key_id, pair.api_key):
            return _error(401, "unauthorized", "unknown key_id or wrong api_key")
        token = state.rules.mint(account, state.clock.monotonic())
        if isinstance(token, Throttled):
            return _throttled(*token)
        created_at = datetime.fromtimestamp(state.clock.time(), UTC)
        return _json(
            200,
            {
                "token": token,
                "created_at": created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            },
        )

    async def _get_stats(self, _: web.Request) -> web.Response:
        return _json(200, self.stats())

    async def _get_accepted(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for batch in self._state.ledger.batches(request.query.get("account")):
            await response.write(_encoder.encode_lines(batch.records()))
        await response.write_eof()
        return response

    async def _get_faults(self, _: web.Request) -> web.Response:
        return _json(200, self.faults)

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            changes = msgspec.json.decode(await request.read(), type=dict[str, Any])
            return _json(200, self.set_faults(**changes))
        except msgspec.DecodeError as exc:
            return _error(400, "bad_request", str(exc))

    async def _get_labels(self, _: web.Request) -> web.Response:
        labels = self._state.rules.labels
        return _json(200, {account: sorted(ids) for account, ids in labels.items()})

    async def _post_labels(self, request: web.Request) -> web.Response:
        try:
            body = msgspec.json.decode(await request.read(), type=_LearnLabels)
        except msgspec.DecodeError as exc:
            return _error(400, "bad_request", str(exc))
        known = self.learn_labels(body.account, body.label_ids)
        return _json(200, {"account": body.account.lower(), "label_ids": sorted(known)})

    async def _post_reset(self, _: web.Request) -> web.Response:
        self.reset()
        _log.info("reset")
        return _json(200, {})


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else None


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
