"""Failures the sandbox injects on purpose (docs/sandbox.md), and the state that decides them.

``Faults`` is what is asked for; ``Injector`` holds the faults in force, ends outages when their
time is up, counts bursts down and draws the random faults from a seeded RNG. Its decisions are
plain data (an outage mode, an ``Injected`` failure, a delay), which ``stream.sandbox.api`` answers.
"""

from __future__ import annotations

import logging
import math
import random
from typing import Any, Literal, NamedTuple

import msgspec
from msgspec import Struct

from stream.sandbox.clock import Clock

__all__ = ["Faults", "Injected", "Injector", "Outage"]

Outage = Literal["off", "503", "drop"]

_log = logging.getLogger(__name__)


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
    labels_status: int = 0
    """The labels endpoint answers this status (0: it answers normally)."""

    def __post_init__(self) -> None:
        for name in ("error_rate", "spike_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        for name in ("fail_next", "throttle_next", "latency_ms", "spike_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 500 <= self.fail_status <= 599:
            raise ValueError("fail_status must be a 5xx status")
        if self.labels_status and not 400 <= self.labels_status <= 599:
            raise ValueError("labels_status must be 0 or a 4xx/5xx status")
        if self.throttle_retry_after_s is not None and self.throttle_retry_after_s < 0:
            raise ValueError("throttle_retry_after_s must not be negative")
        if self.outage_s is not None and self.outage_s <= 0:
            raise ValueError("outage_s must be positive")


class Injected(NamedTuple):
    """An injected failure: the status to answer, why, and for a 429 its ``Retry-After``."""

    status: int
    message: str
    retry_after_s: float | None = None


class Injector:
    """The faults in force for one run of a sandbox; a reset starts a new one."""

    _faults: Faults
    _outage_until: float
    """Monotonic end of the current outage (infinite when it has none)."""
    _rng: random.Random
    """Draws the random faults; seeded, so that a run can be repeated."""

    def __init__(self, faults: Faults, *, seed: int | None, clock: Clock) -> None:
        self._clock = clock
        self._faults = faults
        self._outage_until = self._outage_end(faults)
        self._rng = random.Random(seed)

    @property
    def current(self) -> Faults:
        """The faults in force; bursts count down as requests use them."""
        self.outage()
        return self._faults

    def set(self, **changes: Any) -> Faults:
        """Change the named faults, keep the others; a bad name or value raises ``ValueError``."""
        faults = msgspec.convert({**msgspec.structs.asdict(self._faults), **changes}, Faults)
        if "outage" in changes or "outage_s" in changes:
            self._outage_until = self._outage_end(faults)
        self._faults = faults
        _log.info("faults set: %s", faults)
        return faults

    def outage(self) -> Outage:
        """The outage in force, once one whose time is up has been ended."""
        if self._faults.outage != "off" and self._clock.monotonic() >= self._outage_until:
            self._faults = msgspec.structs.replace(self._faults, outage="off", outage_s=None)
            _log.info("outage over")
        return self._faults.outage

    def inject(self) -> Injected | None:
        """This request's failure, if any: a 429 burst, then a 5xx burst, then the error rate."""
        faults = self._faults
        if faults.throttle_next:
            self._faults = msgspec.structs.replace(faults, throttle_next=faults.throttle_next - 1)
            return Injected(429, "injected 429 burst", faults.throttle_retry_after_s)
        if faults.fail_next:
            self._faults = msgspec.structs.replace(faults, fail_next=faults.fail_next - 1)
            return Injected(faults.fail_status, "injected 5xx burst")
        if faults.error_rate and self._rng.random() < faults.error_rate:
            return Injected(self._rng.choice((500, 502, 503)), "injected random error")
        return None

    def delay_s(self) -> float:
        """The latency to add to this answer, a spike included."""
        faults = self._faults
        delay_ms = faults.latency_ms
        if faults.spike_probability and self._rng.random() < faults.spike_probability:
            delay_ms += faults.spike_ms
        return delay_ms / 1000

    def _outage_end(self, faults: Faults) -> float:
        return self._clock.monotonic() + (math.inf if faults.outage_s is None else faults.outage_s)
