"""The service's HTTP endpoints: ``/metrics``, ``/healthz`` and ``/readyz`` (docs/operations.md).

Liveness never looks at the API or the broker: an outage there must not restart the pods (a restart
would only re-read what is already buffered); backpressure handles it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from stream.metrics import Metrics

__all__ = ["Health", "http_app"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    """What liveness and readiness look at."""

    last_poll: Callable[[], float]
    """Monotonic time the consumer last returned from ``consume``."""
    threads: Callable[[], Mapping[str, bool]]
    """Every thread the service runs, by name, and whether it is alive: the consumer, the token
    slots, the producers' poll threads, the reconciler's consumer and originals reader."""
    ready: Callable[[], bool]
    """Joined the group (got an assignment, possibly empty)."""
    stall_s: float
    """No poll for this long means the consumer is stuck: liveness fails, Kubernetes restarts us."""
    unready: Callable[[], str | None] = lambda: None
    """Why the process cannot send even though it joined (it holds no usable token), or None."""
    auth_refused: Callable[[], list[str]] = list
    """Accounts whose records are dead-lettered as ``auth_refused``: named by ``/readyz``, which
    stays 200 for them (one customer's revoked key does not take the replica out of service)."""

    def not_ready(self) -> str | None:
        """Why ``/readyz`` fails (and ``dcr_ready`` is 0), or None: ready."""
        if not self.ready():
            return "not in the group yet"
        return self.unready()


def http_app(metrics: Metrics, health: Health) -> web.Application:
    """``/metrics``, ``/healthz`` (the loop answers, every thread lives and the consumer polls)
    and ``/readyz``."""

    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")

    async def healthz(_: web.Request) -> web.Response:
        idle = time.monotonic() - health.last_poll()
        dead = [name for name, alive in health.threads().items() if not alive]
        if dead:
            ended = "; ".join(f"{name} thread ended" for name in dead)
            return web.json_response({"status": ended}, status=503)
        if idle > health.stall_s:
            return web.json_response({"status": f"consumer stalled for {idle:.0f} s"}, status=503)
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if (why := health.not_ready()) is not None:
            return web.json_response({"status": why}, status=503)
        if refused := health.auth_refused():
            return web.json_response({"status": "ready", "auth_refused": refused})
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
