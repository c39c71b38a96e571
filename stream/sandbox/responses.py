"""JSON answers, in the error shapes the API documents (docs/api.md), for every sandbox endpoint."""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec
from aiohttp import web

__all__ = ["encoder", "error", "json_response", "throttled"]

encoder = msgspec.json.Encoder()


def json_response(
    status: int, body: object, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=encoder.encode(body), content_type="application/json", headers=headers
    )


def error(status: int, slug: str, message: str) -> web.Response:
    return json_response(status, {"slug": slug, "message": message})


def throttled(message: str, retry_after_s: float | None) -> web.Response:
    """A 429, with ``Retry-After`` in whole seconds unless ``retry_after_s`` is None."""
    headers = None if retry_after_s is None else {"Retry-After": str(math.ceil(retry_after_s))}
    return json_response(429, {"slug": "too_many_requests", "message": message}, headers)
