"""A ``stream.metrics.State`` for tests: every reader idle but the ones a test gives."""

from __future__ import annotations

from typing import Any

from stream.metrics import State


def idle_state(**readers: Any) -> State:
    """Nothing buffered, paused, assigned, lagging, committed, minted or paced, unless ``readers``
    say otherwise."""
    idle: dict[str, Any] = {
        "buffered": int,
        "open_records": int,
        "paused": int,
        "assigned": int,
        "lag": dict,
        "last_commit": float,
        "token_refreshes": int,
        "rates": dict,
    }
    return State(**(idle | readers))
