"""Failures the sandbox injects on purpose (docs/sandbox.md)."""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

__all__ = ["Faults", "Outage"]

Outage = Literal["off", "503", "drop"]


class Faults(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Failures injected into batch requests (the token endpoint is spared)."""

    error_rate: float = 0.0
    """Fraction of batch requests answered 500, 502 or 503, drawn from the seeded RNG."""
    fail_next: int = 0
    """A 5xx burst: the next N batch requests are answered ``fail_status``."""
    fail_status: int = 503
    throttle_next: int = 0
    """A 429 burst: the next N batch requests are answered 429."""
    throttle_retry_after_s: int | None = 1
    """``Retry-After`` of the burst's 429s; None sends none."""
    latency_ms: float = 0.0
    """Added before every batch answer."""
    spike_probability: float = 0.0
    spike_ms: float = 0.0
    """With ``spike_probability`` (seeded), this much more latency."""
    outage: Outage = "off"
    """``503``: batch requests are answered 503; ``drop``: their connection is closed unanswered."""
    outage_s: float | None = None
    """How long an outage lasts from when it is set; None: until ``outage`` is set to ``off``."""

    def __post_init__(self) -> None:
        for name in ("error_rate", "spike_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in ("fail_next", "throttle_next", "latency_ms", "spike_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 500 <= self.fail_status <= 599:
            raise ValueError("fail_status must be a 5xx status")
        if self.throttle_retry_after_s is not None and self.throttle_retry_after_s < 0:
            raise ValueError("throttle_retry_after_s must not be negative")
        if self.outage_s is not None and self.outage_s <= 0:
            raise ValueError("outage_s must be positive")
