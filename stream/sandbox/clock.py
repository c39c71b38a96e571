"""Where the sandbox reads time: the ``time`` module, or a ``ManualClock`` that tests advance."""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "ManualClock"]


class Clock(Protocol):
    """Where the sandbox reads time, in seconds; the ``time`` module is one."""

    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class ManualClock:
    """A clock that moves only when told to: tests advance it instead of sleeping."""

    def __init__(self, *, wall_s: float | None = None) -> None:
        self._monotonic = 0.0
        self._wall = time.time() if wall_s is None else wall_s

    def monotonic(self) -> float:
        return self._monotonic

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._monotonic += seconds
        self._wall += seconds
