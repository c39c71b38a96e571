"""How failures are retried: the backoff every retry waits (docs/design.md#retry)."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Capped exponential backoff with full jitter, never shorter than a ``Retry-After``."""

    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        jittered = rng.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))
        return max(jittered, retry_after_s or 0.0)
