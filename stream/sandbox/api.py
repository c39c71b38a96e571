"""The API's endpoints (docs/api.md), served by aiohttp over a ``State``; ``routes`` is their table.

The single-record endpoint (docs/api.md#single-record) checks its one record by the rules of a
batch's records, under a per-token limit of its own, and the ledger keeps what it accepts as a
batch of one on the ``realtime`` path. An endpoint that faults apply to (every one but the token
endpoint) answers through
``_Api._guarded``, which runs the steps such endpoints share (outage, token, quota, injected
failures, counting, latency) and hands the rest to the endpoint's own answer. An endpoint that
exists with and without ``/v2`` is one line of the table, and its answer is told the version.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import NamedTuple

import msgspec
from aiohttp import web
from msgspec import Struct

from stream.sandbox.batches import Batch, Refusal, Version, check_batch, check_record
from stream.sandbox.faults import Outage
from stream.sandbox.ledger import Counters
from stream.sandbox.responses import error, json_response, throttled
from stream.sandbox.rules import Throttled
from stream.sandbox.state import State
from stream.sandbox.statuses import record_status

__all__ = ["routes"]

_PREFIXES: dict[Version, str] = {"v1": "", "v2": "/v2"}
"""Each version's path prefix."""

_log = logging.getLogger(__name__)

_PROCESSED = {"status_info": {"status": "success", "message": "Record processed successfully"}}
"""The single-record endpoint's answer to a record it accepted."""


def routes(state: State) -> list[web.RouteDef]:
    api = _Api(state)
    return [
        *_versioned(web.post, "/clients/{account}/dynamic_call_records", api.batch),
        *_versioned(web.post, "/clients/{account}/dynamic_call_record", api.record),
        *_versioned(web.get, "/clients/{account}/dynamic_call_records", api.status),
        web.post("/clients/{account}/token", api.token),
        web.get("/clients/{account}/labels", api.labels),
    ]


class _Call(NamedTuple):
    """A request the shared steps let through: for whom, in which version, and when it arrived."""

    account: str
    version: Version
    received_ms: int
    """Wall time, epoch milliseconds."""
    received_s: float
    """Monotonic: the instant the rules judged it at."""
    realtime: bool
    """A single-record request: its own per-token limit, its own counters."""


_Answer = Callable[[web.Request, _Call], Awaitable[web.Response]]


class _KeyPair(Struct):
    key_id: str
    api_key: str


class _Api:
    def __init__(self, state: State) -> None:
        self._state = state

    async def batch(self, version: Version, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, version, self._accept_batch)

    async def record(self, version: Version, request: web.Request) -> web.StreamResponse:
        return await self._guarded(request, version, self._accept_record, realtime=True)

    async def labels(self, request: web.Request) -> web.Response:
        """The account's label list, a page at a time (docs/api.md#labels): the same token as
        batches, no quota and none of the batch faults but an outage and ``labels_status``."""
        state = self._state
        account = _account(request)
        counters = state.ledger.counters(account)
        response = self._label_page(request, account)
        counters.labels[str(response.status)] += 1
        return response

    def _label_page(self, request: web.Request, account: str) -> web.Response:
        state = self._state
        if state.faults.outage() != "off":
            return error(503, "service_unavailable", "the sandbox is in an injected outage")
        if not state.rules.authorised(account, _bearer(request), state.clock.monotonic()):
            return error(401, "unauthorized", "missing, unknown or expired bearer token")
        if status := state.faults.current.labels_status:
            return error(status, "injected", f"the labels endpoint answers {status} (injected)")
        try:
            page = int(request.query.get("page", "1"))
            limit = int(request.query.get("limit", "1000"))
        except ValueError:
            return error(400, "bad_request", "page and limit must be whole numbers")
        if page < 1 or limit < 1:
            return error(400, "bad_request", "page and limit start at 1")
        labels = state.rules.label_page(account, page, limit)
        if labels is None:
            return error(404, "not_found", f"no client account {account}")
        return json_response(
            200,
            [
                {
                    "id": label.id,
                    "name": f"label {label.id[:8]}",
                    "label_type": label.label_type,
                    "client_account_id": account,
                    "created_at": _iso(label.created_at),
                    "deleted_at": None if label.deleted_at is None else _iso(label.deleted_at),
                }
                for label in labels
            ],
        )

    async def status(self, version: Version, request: web.Request) -> web.Response:
        """A batch's per-record statuses (docs/api.md#batch-status): the same token as batches,
        its own count (no batch quota), none of the batch faults but an outage."""
        account = _account(request)
        response = self._status(request, version, account)
        self._state.ledger.counters(account).statuses[str(response.status)] += 1
        return response

    def _status(self, request: web.Request, version: Version, account: str) -> web.Response:
        state = self._state
        if state.faults.outage() != "off":
            return error(503, "service_unavailable", "the sandbox is in an injected outage")
        if not state.rules.authorised(account, _bearer(request), state.clock.monotonic()):
            return error(401, "unauthorized", "missing, unknown or expired bearer token")
        batch_id = request.query.get("batchId", "")
        if not batch_id:
            return error(400, "bad_request", "batchId is required")
        batch = state.ledger.batch(batch_id)
        if batch is None or batch.account != account:
            return error(404, "not_found", f"no batch {batch_id} of client account {account}")
        age_s = state.clock.monotonic() - batch.received_monotonic_ms / 1000
        names = ("caller", "receiver") if version == "v1" else ("caller_number", "receiver_number")
        data = []
        for index, record in enumerate(batch.records()):
            entry: dict[str, object] = {
                "id": str(uuid.uuid5(uuid.UUID(batch.batch_id), str(index))),
                names[0]: record.caller,
                names[1]: record.receiver,
                "label_id": record.label_id,
                "starts_at": record.starts_at,
                "ends_at": record.ends_at,
                "status_info": record_status(state.statuses, record.receiver, age_s),
                "created_at": _iso(batch.received_ms / 1000),
            }
            if record.label_name is not None:
                entry["label_name" if version == "v1" else "dynamic_label_name"] = record.label_name
            if record.call_reason is not None:
                entry["call_reason" if version == "v1" else "dynamic_call_reason"] = (
                    record.call_reason
                )
            data.append(entry)
        return json_response(
            200, {"client_account_id": account, "batch_id": batch.batch_id, "data": data}
        )

    async def token(self, request: web.Request) -> web.Response:
        account = _account(request)
        counters = self._state.ledger.counters(account)
        response = await self._mint(request, account)
        counters.tokens[str(response.status)] += 1
        return response

    async def _guarded(
        self, request: web.Request, version: Version, answer: _Answer, *, realtime: bool = False
    ) -> web.StreamResponse:
        """Answer a request that faults apply to; the first of these that applies decides:

        1. an outage in ``drop`` mode: the connection is closed unanswered;
        2. an outage in ``503`` mode: 503;
        3. no valid token for this account: 401;
        4. over the token's own quota or the account's: 429 (it counts against neither); a
           single-record request: over its token's single-record limit;
        5. a 429 burst, then a 5xx burst, then the random error rate;
        6. otherwise ``answer``.

        Injected latency comes after the answer is decided, so a client that times out and
        retries delivers a batch twice, as it would against the real API. The receive time is
        taken before the body is read.
        """
        state = self._state
        account = _account(request)
        counters = state.ledger.counters(account)
        outage = state.faults.outage()
        if outage == "drop":
            counters.requests["dropped"] += 1
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)  # never sent: the connection is gone
        now_ms, now_s = int(state.clock.time() * 1000), state.clock.monotonic()
        call = _Call(account, version, now_ms, now_s, realtime)
        response = self._refusal(request, call, outage, counters)
        if response is None:
            response = await answer(request, call)
        (counters.realtime if realtime else counters.requests)[str(response.status)] += 1
        if response.status != 200:
            _log.debug("%s %s answered %d", request.method, request.path, response.status)
        if delay_s := state.faults.delay_s():
            await asyncio.sleep(delay_s)
        return response

    def _refusal(
        self, request: web.Request, call: _Call, outage: Outage, counters: Counters
    ) -> web.Response | None:
        rules, now, token = self._state.rules, call.received_s, _bearer(request)
        if outage == "503":
            return error(503, "service_unavailable", "the sandbox is in an injected outage")
        if not rules.authorised(call.account, token, now):
            return error(401, "unauthorized", "missing, unknown or expired bearer token")
        admit = rules.admit_record if call.realtime else rules.admit
        if (over := admit(call.account, token, now)) is not None:
            counters.throttled_by[over.cause] += 1
            return throttled(over.message, over.retry_after_s)
        if (injected := self._state.faults.inject()) is not None:
            if injected.status == 429:
                counters.throttled_by["injected"] += 1
                return throttled(injected.message, injected.retry_after_s)
            return error(injected.status, "server_error", injected.message)
        return None

    async def _accept_batch(self, request: web.Request, call: _Call) -> web.Response:
        """415 unless JSON; 400 or 413 for a batch ``check_batch`` refuses; else kept and 200."""
        batch = await self._keep(request, call, check_batch)
        if isinstance(batch, web.Response):
            return batch
        _log.debug(
            "%s batch %s for %s: %d records accepted (received_ms=%d, received_monotonic_ms=%.3f)",
            call.version,
            batch.batch_id,
            call.account,
            batch.size,
            batch.received_ms,
            batch.received_monotonic_ms,
        )
        if call.version == "v2":
            return json_response(200, {"batch_id": batch.batch_id})
        # v1 names its batch only in the message text (docs/api.md#batch-status).
        message = f"Records Uploaded Successfully. BatchID: {batch.batch_id}"
        return json_response(200, {"message": message})

    async def _accept_record(self, request: web.Request, call: _Call) -> web.Response:
        """One record (docs/api.md#single-record): 415 unless JSON; 400 naming the field for a
        record ``check_record`` refuses; else kept and 200 with the API's ``status_info``."""
        kept = await self._keep(request, call, check_record)
        if isinstance(kept, web.Response):
            return kept
        return json_response(200, _PROCESSED)

    async def _keep(
        self, request: web.Request, call: _Call, check: Callable[..., Batch | Refusal]
    ) -> Batch | web.Response:
        """Read and ``check`` a body of records, and keep it in the ledger; the answer instead
        when it is not JSON, too large, refused, or an outage began while it was read (nothing is
        accepted during one)."""
        if request.content_type != "application/json":
            return error(415, "unsupported_media_type", "Content-Type must be application/json")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            return json_response(413, {"field": "call_records", "message": exc.text, "status": 413})
        state = self._state
        kept = check(
            body,
            account=call.account,
            version=call.version,
            labels=state.rules.labels.get(call.account),
            now_ms=int(state.clock.time() * 1000),
            received_ms=call.received_ms,
            received_monotonic_ms=call.received_s * 1000,
        )
        if isinstance(kept, Refusal):
            return json_response(kept.status, kept.body)
        if state.faults.outage() != "off":
            return error(503, "service_unavailable", "the sandbox is in an injected outage")
        state.ledger.keep(kept)
        return kept

    async def _mint(self, request: web.Request, account: str) -> web.Response:
        if request.headers.get("X-Public-Access", "").lower() != "allow":
            return error(401, "unauthorized", "the token endpoint needs X-Public-Access: allow")
        try:
            pair = msgspec.json.decode(await request.read(), type=_KeyPair)
        except msgspec.DecodeError as exc:
            return error(400, "bad_request", f"the body must be {{key_id, api_key}}: {exc}")
        state = self._state
        if not state.rules.key_pair_ok(account, pair.key_id, pair.api_key):
            return error(401, "unauthorized", "unknown key_id or wrong api_key")
        token = state.rules.mint(account, state.clock.monotonic())
        if isinstance(token, Throttled):
            state.ledger.counters(account).throttled_by[token.cause] += 1
            return throttled(token.message, token.retry_after_s)
        return json_response(200, {"token": token, "created_at": _iso(state.clock.time())})


def _versioned(
    route: Callable[..., web.RouteDef],
    path: str,
    handler: Callable[[Version, web.Request], Awaitable[web.StreamResponse]],
) -> list[web.RouteDef]:
    """``path`` once per version, ``handler`` told which."""
    return [
        route(prefix + path, partial(handler, version)) for version, prefix in _PREFIXES.items()
    ]


def _iso(wall_s: float) -> str:
    """An ISO 8601 UTC time with milliseconds, as the API writes them."""
    when = datetime.fromtimestamp(wall_s, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _account(request: web.Request) -> str:
    # Compared lower-cased, as UUIDs are (stream.validation does the same).
    return request.match_info["account"].lower()


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" else None
