"""What every fault scenario shares: its size, its deadline, the service's session settings.

Sizes are bounded by default so that the suite runs in a few minutes on a 2-core machine;
``DCR_SOAK=1`` runs every scenario at its soak size (and the API outage at its full 30 s).
"""

from __future__ import annotations

import os

SOAK = os.environ.get("DCR_SOAK") == "1"

DEADLINE_S = 1800.0 if SOAK else 300.0
"""The longest a run may take to complete; a bound on a wait, never a sleep."""

FAST_SESSION = '{"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}'
"""librdkafka pass-through for scenarios that kill or add replicas: a dead member's partitions
move after 6 s (the broker's minimum) instead of librdkafka's default 45 s."""


def sized(bounded: int, soak: int) -> int:
    return soak if SOAK else bounded
