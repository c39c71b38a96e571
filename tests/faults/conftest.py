"""Fixtures of the fault-injection suite (issue 10): sizes, an API stand-in with any configuration,
the integration suite's service and sandbox fixtures, and the summary of every scenario's report.

Sizes are bounded by default so that the suite runs in a few minutes on a 2-core machine;
``DCR_SOAK=1`` runs every scenario at its soak size (and the API outage at its full 30 s).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from stream.sandbox import SandboxConfig
from tests.faults.verifier import REPORTS
from tests.integration.conftest import (  # noqa: F401 - fixtures, re-exported for this suite
    TOKEN,
    SandboxThread,
    sandbox_thread,
    service_factory,
)

SOAK = os.environ.get("DCR_SOAK") == "1"

DEADLINE_S = 1800.0 if SOAK else 300.0
"""The longest a run may take to complete; a bound on a wait, never a sleep."""

FAST_SESSION = '{"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}'
"""librdkafka pass-through for scenarios that kill or add replicas: a dead member's partitions
move after 6 s (the broker's minimum) instead of librdkafka's default 45 s."""


def sized(bounded: int, soak: int) -> int:
    return soak if SOAK else bounded


@pytest.fixture
def api() -> Iterator[Callable[..., SandboxThread]]:
    """``api(**SandboxConfig fields)``: a sandbox on its own loop, stopped at teardown. Unlike
    ``sandbox_thread`` any field may be set (quota, TLS, token lifetime, key pair)."""
    started: list[SandboxThread] = []

    def start(**config: Any) -> SandboxThread:
        settings: dict[str, Any] = {"static_token": TOKEN, "rate_limit_rps": 1000, "seed": 10}
        server = SandboxThread(SandboxConfig(**{**settings, **config}))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORTS:
        return
    terminalreporter.section(f"fault injection ({'soak' if SOAK else 'bounded'} sizes)")
    for report in sorted(REPORTS, key=lambda r: r.scenario):
        terminalreporter.write_line(report.line())
        for problem in report.problems():
            terminalreporter.write_line(f"    {problem}")
