"""What one HTTP exchange with the API comes to (docs/api.md#errors): the ``Response`` every
request returns, its ``Retry-After`` and the process's one ``aiohttp`` session.

A request never raises for an HTTP status or a transport failure: both come back as a
:class:`Response` whose :attr:`Response.kind` tells the delivery engine what to do.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Literal

import aiohttp

__all__ = ["Kind", "Response", "make_session", "parse_retry_after"]

Kind = Literal["ok", "auth", "reject", "retry"]

_REJECT = frozenset({400, 413, 422})
_RETRY = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class Response:
    """What one request came to. ``status`` is 0 when no HTTP answer arrived (see ``error``)."""

    status: int
    body: bytes = b""
    retry_after_s: float | None = None
    batch_id: str | None = None
    error: str | None = None

    @property
    def kind(self) -> Kind:
        """``ok`` (2xx), ``auth`` (401/403), ``reject`` (400/413/422: bisect) or ``retry``.

        Everything else is retried: 429, 408, 425, 5xx and transport failures
        (docs/design.md#retry), and also other 4xx (404, 405, …), which mean a misconfiguration
        rather than a bad record, so dead-lettering would turn an operator's typo into data loss.
        """
        if 200 <= self.status < 300:
            return "ok"
        if self.status in (401, 403):
            return "auth"
        if self.status in _REJECT:
            return "reject"
        return "retry"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def make_session(
    *, timeout_s: float, connect_timeout_s: float = 10.0, ca_bundle: str | None = None
) -> aiohttp.ClientSession:
    """The process's one session; call it inside the running loop."""
    context = ssl.create_default_context(cafile=ca_bundle)
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s),
        connector=aiohttp.TCPConnector(ssl=context, limit=256),
        raise_for_status=False,
    )
