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
import hmac
import logging
import math
import random
import secrets
import signal
import ssl
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web
from msgspec import Struct

from stream import logs
from stream.sandbox.batches import MAX_RECORDS, Accepted, Batch, Refusal, Version, check_batch
from stream.sandbox.clock import Clock, ManualClock
from stream.sandbox.config import SandboxConfig, parse_labels
from stream.sandbox.faults import Faults, Outage

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

MINT_LIMIT = 10
MINT_WINDOW_S = 30 * 60
"""At most ``MINT_LIMIT`` tokens per account in any ``MINT_WINDOW_S`` (SPEC §2)."""
QUOTA_WINDOW_S = 1.0
_SHUTDOWN_TIMEOUT_S = 1.0
"""In-flight answers (held back by injected latency) get this long on stop: a sandbox holds nothing
worth waiting for, and SIGTERM must end it well inside Kubernetes' 30 s grace."""

_log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()


class AccountStats(Struct, frozen=True, kw_only=True):
    requests: dict[str, int]
    """Batch requests by HTTP status; ``dropped`` counts connections cut by an outage."""
    tokens: dict[str, int]
    """Token requests by HTTP status."""
    records_accepted: int
    throttled: int
    """Batch requests answered 429."""


class Stats(Struct, frozen=True, kw_only=True):
    accounts: dict[str, AccountStats]
    totals: AccountStats


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


def _admit(window: deque[float], now: float, limit: int, period_s: float) -> float | None:
    """Count one use in a rolling window of ``period_s``; None, or the seconds until a use frees."""
    while window and window[0] <= now - period_s:
        window.popleft()
    if len(window) >= limit:
        return window[0] + period_s - now
    window.append(now)
    return None


def _lower(labels: Iterable[str]) -> frozenset[str]:
    return frozenset(label.lower() for label in labels)


@dataclass(slots=True)
class _Account:
    requests: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    records_accepted: int = 0
    admitted: deque[float] = field(default_factory=deque)
    """Monotonic times of the requests admitted in the last quota window."""
    mints: deque[float] = field(default_factory=deque)
    """Monotonic times of the tokens minted in the last mint window."""

    def snapshot(self) -> AccountStats:
        return AccountStats(
            requests=dict(self.requests),
            tokens=dict(self.tokens),
            records_accepted=self.records_accepted,
            throttled=self.requests["429"],
        )


class Sandbox:
    """The API stand-in: ``async with Sandbox(config) as sandbox`` serves on ``sandbox.url``."""

    config: SandboxConfig
    _batches: list[Batch]
    """Accepted batches in arrival order."""
    _accounts: dict[str, _Account]
    _tokens: dict[str, tuple[str, float]]
    """Minted token → (its account, monotonic expiry)."""
    _labels: dict[str, frozenset[str]]
    """Known label ids per account."""
    _faults: Faults
    _outage_until: float
    """Monotonic end of the current outage (infinite when it has none)."""
    _rng: random.Random
    """Draws the random faults; seeded by ``config.seed``, re-seeded on reset."""

    def __init__(self, config: SandboxConfig | None = None, *, clock: Clock = time) -> None:
        self.config = config or SandboxConfig()
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self.reset()

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
        self._batches = []
        self._accounts = {}
        self._tokens = {}
        self._labels = {a.lower(): _lower(ids) for a, ids in self.config.labels.items() if ids}
        self._faults = self.config.faults
        self._outage_until = self._outage_end(self._faults)
        self._rng = random.Random(self.config.seed)

    @property
    def faults(self) -> Faults:
        """The faults now in force; bursts count down as requests use them."""
        self._outage_now()
        return self._faults

    def set_faults(self, **changes: Any) -> Faults:
        """Change the named faults, keep the others; a bad name or value raises ``ValueError``."""
        faults = msgspec.convert({**msgspec.structs.asdict(self._faults), **changes}, Faults)
        if "outage" in changes or "outage_s" in changes:
            self._outage_until = self._outage_end(faults)
        self._faults = faults
        _log.info("faults set: %s", faults)
        return faults

    def learn_labels(self, account: str, label_ids: Iterable[str]) -> frozenset[str]:
        """Add label ids to those ``account`` knows; returns all it knows now."""
        account = account.lower()
        known = self._labels[account] = self._labels.get(account, frozenset()) | _lower(label_ids)
        _log.info("account %s knows %d label ids", account, len(known))
        return known

    def accepted(self, account: str | None = None) -> list[Accepted]:
        """Every accepted record (of ``account``), in arrival order."""
        return [record for batch in self._of(account) for record in batch.records()]

    def stats(self) -> Stats:
        accounts = {name: counters.snapshot() for name, counters in self._accounts.items()}
        requests: Counter[str] = Counter()
        tokens: Counter[str] = Counter()
        for counters in self._accounts.values():
            requests.update(counters.requests)
            tokens.update(counters.tokens)
        totals = AccountStats(
            requests=dict(requests),
            tokens=dict(tokens),
            records_accepted=sum(s.records_accepted for s in accounts.values()),
            throttled=requests["429"],
        )
        return Stats(accounts=accounts, totals=totals)

    def _of(self, account: str | None) -> list[Batch]:
        if account is None:
            return list(self._batches)
        return [batch for batch in self._batches if batch.account == account.lower()]

    def _account(self, request: web.Request) -> tuple[str, _Account]:
        account = request.match_info["account"].lower()
        counters = self._accounts.get(account)
        if counters is None:
            counters = self._accounts[account] = _Account()
        return account, counters

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.config.tls_cert is None or self.config.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    def _outage_end(self, faults: Faults) -> float:
        return self._clock.monotonic() + (math.inf if faults.outage_s is None else faults.outage_s)

    def _outage_now(self) -> Outage:
        if self._faults.outage != "off" and self._clock.monotonic() >= self._outage_until:
            self._faults = msgspec.structs.replace(self._faults, outage="off", outage_s=None)
            _log.info("outage over")
        return self._faults.outage

    async def _batch_v1(self, request: web.Request) -> web.StreamResponse:
        return await self._batch(request, "v1")

    async def _batch_v2(self, request: web.Request) -> web.StreamResponse:
        return await self._batch(request, "v2")

    async def _batch(self, request: web.Request, version: Version) -> web.StreamResponse:
        account, counters = self._account(request)
        if self._outage_now() == "drop":
            counters.requests["dropped"] += 1
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)  # never sent: the connection is gone
        response = await self._answer(request, account, version, counters)
        counters.requests[str(response.status)] += 1
        if response.status != 200:
            _log.debug("%s batch for %s answered %d", version, account, response.status)
        delay_ms = self._faults.latency_ms
        if self._faults.spike_probability and self._rng.random() < self._faults.spike_probability:
            delay_ms += self._faults.spike_ms
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        return response

    async def _answer(
        self, request: web.Request, account: str, version: Version, counters: _Account
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
        received_ms = int(self._clock.time() * 1000)
        now = self._clock.monotonic()
        if self._faults.outage == "503":
            return _error(503, "service_unavailable", "the sandbox is in an injected outage")
        if not self._authorised(request, account, now):
            return _error(401, "unauthorized", "missing, unknown or expired bearer token")
        rps = self.config.rate_limit_rps
        if (wait_s := _admit(counters.admitted, now, rps, QUOTA_WINDOW_S)) is not None:
            return _throttled(
                f"more than {rps} requests per second",
                max(1.0, wait_s) if self.config.retry_after else None,
            )
        if (faults := self._faults).throttle_next:
            self._faults = msgspec.structs.replace(faults, throttle_next=faults.throttle_next - 1)
            return _throttled("injected 429 burst", faults.throttle_retry_after_s)
        if faults.fail_next:
            self._faults = msgspec.structs.replace(faults, fail_next=faults.fail_next - 1)
            return _error(faults.fail_status, "server_error", "injected 5xx burst")
        if faults.error_rate and self._rng.random() < faults.error_rate:
            status = self._rng.choice((500, 502, 503))
            return _error(status, "server_error", "injected random error")
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
            labels=self._labels.get(account),
            now_ms=int(self._clock.time() * 1000),
            received_ms=received_ms,
            received_monotonic_ms=now * 1000,
        )
        if isinstance(batch, Refusal):
            return _json(batch.status, batch.body)
        self._batches.append(batch)
        counters.records_accepted += batch.size
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

    def _authorised(self, request: web.Request, account: str, now: float) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        static = self.config.static_token
        if static is not None and hmac.compare_digest(token.encode(), static.encode()):
            return True
        minted = self._tokens.get(token)
        return minted is not None and minted[0] == account and now < minted[1]

    async def _token(self, request: web.Request) -> web.Response:
        account, counters = self._account(request)
        response = await self._mint(request, account, counters)
        counters.tokens[str(response.status)] += 1
        return response

    async def _mint(self, request: web.Request, account: str, counters: _Account) -> web.Response:
        if request.headers.get("X-Public-Access", "").lower() != "allow":
            return _error(401, "unauthorized", "the token endpoint needs X-Public-Access: allow")
        try:
            pair = msgspec.json.decode(await request.read(), type=_KeyPair)
        except msgspec.DecodeError as exc:
            return _error(400, "bad_request", f"the body must be {{key_id, api_key}}: {exc}")
        key_id, api_key = self.config.key_id, self.config.api_key
        if key_id is not None and api_key is not None:
            id_ok = hmac.compare_digest(pair.key_id.encode(), key_id.encode())
            key_ok = hmac.compare_digest(pair.api_key.encode(), api_key.encode())
            if not (id_ok and key_ok):
                return _error(401, "unauthorized", "unknown key_id or wrong api_key")
        now = self._clock.monotonic()
        if (wait_s := _admit(counters.mints, now, MINT_LIMIT, MINT_WINDOW_S)) is not None:
            return _throttled(
                f"at most {MINT_LIMIT} tokens per {MINT_WINDOW_S // 60} minutes",
                wait_s if self.config.retry_after else None,
            )
        self._tokens = {t: held for t, held in self._tokens.items() if now < held[1]}
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (account, now + self.config.token_lifetime_s)
        created_at = datetime.fromtimestamp(self._clock.time(), UTC)
        _log.info("token minted for account %s", account)
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
        for batch in self._of(request.query.get("account")):
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
        return _json(200, {account: sorted(ids) for account, ids in self._labels.items()})

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
