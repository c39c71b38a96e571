"""The sandbox's own endpoints, under ``/_sandbox/`` (docs/sandbox.md): its control API over HTTP.

They read and change the same ``State`` as ``Sandbox``'s Python methods, through the same calls,
so the two surfaces cannot drift apart; ``routes`` is their table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web
from msgspec import Struct

from stream.sandbox.responses import encoder, error, json_response
from stream.sandbox.state import State

__all__ = ["routes"]

_log = logging.getLogger(__name__)


def routes(state: State) -> list[web.RouteDef]:
    control = _Control(state)
    return [
        web.get("/_sandbox/stats", control.get_stats),
        web.get("/_sandbox/accepted", control.get_accepted),
        web.get("/_sandbox/faults", control.get_faults),
        web.post("/_sandbox/faults", control.post_faults),
        web.get("/_sandbox/labels", control.get_labels),
        web.post("/_sandbox/labels", control.post_labels),
        web.post("/_sandbox/labels/delete", control.delete_labels),
        web.get("/_sandbox/statuses", control.get_statuses),
        web.post("/_sandbox/statuses", control.post_statuses),
        web.post("/_sandbox/reset", control.post_reset),
    ]


class _LearnLabels(Struct, forbid_unknown_fields=True):
    account: str
    label_ids: list[str]


class _Control:
    def __init__(self, state: State) -> None:
        self._state = state

    async def get_stats(self, _: web.Request) -> web.Response:
        return json_response(200, self._state.stats())

    async def get_accepted(self, request: web.Request) -> web.StreamResponse:
        """NDJSON, a batch at a time: a million records need not be decoded at once."""
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for batch in self._state.ledger.batches(request.query.get("account")):
            await response.write(encoder.encode_lines(batch.records()))
        await response.write_eof()
        return response

    async def get_faults(self, _: web.Request) -> web.Response:
        return json_response(200, self._state.faults.current)

    async def post_faults(self, request: web.Request) -> web.Response:
        try:
            changes = msgspec.json.decode(await request.read(), type=dict[str, Any])
            return json_response(200, self._state.faults.set(**changes))
        except msgspec.DecodeError as exc:
            return error(400, "bad_request", str(exc))

    async def get_labels(self, _: web.Request) -> web.Response:
        labels = self._state.rules.labels
        return json_response(200, {account: sorted(ids) for account, ids in labels.items()})

    async def post_labels(self, request: web.Request) -> web.Response:
        """Create labels, as Truecaller's console does."""
        return await self._change_labels(request, self._state.rules.learn_labels)

    async def delete_labels(self, request: web.Request) -> web.Response:
        """Delete labels, as Truecaller's console does."""
        return await self._change_labels(request, self._state.rules.forget_labels)

    async def _change_labels(
        self, request: web.Request, change: Callable[[str, list[str], float], frozenset[str]]
    ) -> web.Response:
        try:
            body = msgspec.json.decode(await request.read(), type=_LearnLabels)
        except msgspec.DecodeError as exc:
            return error(400, "bad_request", str(exc))
        known = change(body.account, body.label_ids, self._state.clock.time())
        return json_response(200, {"account": body.account.lower(), "label_ids": sorted(known)})

    async def get_statuses(self, _: web.Request) -> web.Response:
        return json_response(200, self._state.statuses)

    async def post_statuses(self, request: web.Request) -> web.Response:
        """Change the batch status rules (``StatusRules`` fields), keep the others."""
        try:
            changes = msgspec.json.decode(await request.read(), type=dict[str, Any])
            self._state.statuses = self._state.statuses.changed(**changes)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            return error(400, "bad_request", str(exc))
        _log.info("statuses set: %s", self._state.statuses)
        return json_response(200, self._state.statuses)

    async def post_reset(self, _: web.Request) -> web.Response:
        self._state.reset()
        _log.info("reset")
        return json_response(200, {})
