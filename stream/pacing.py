"""When a request may go: rolling-window slots and a pace per token (docs/design.md#quota).

Every request goes out on a token of its account's pool (``stream.pool``), and each token is
paced on its own (``Pace``): at most ``DCR_TOKEN_REQUESTS_PER_MINUTE`` in any rolling minute, spread
evenly. ``Slots`` is the rolling window itself, also the optional ``DCR_RATE_LIMIT_RPS`` cap on a
whole account. A 429 costs only the request it refused: that token backs off (``Pace.throttled``),
the request goes to the next token, and no other token slows down. The lanes that wait on these
are ``stream.lanes``.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import deque

__all__ = ["Pace", "Slots"]

_WINDOW_MARGIN = 1.02
"""A per-second window is 2% longer than the API's second (see ``Slots``)."""
_MIN_GAP = 0.8
"""Requests are never closer than 0.8 of the mean spacing (see ``Slots``)."""
_MAX_WINDOW_REQUESTS = 1000
"""Above this many requests per second the window is shortened to hold this many, so that its log
stays small when the cap is set out of the way (``DCR_RATE_LIMIT_RPS=1000000``)."""

_MINUTE_S = 60.0
_TOKEN_SLACK_S = 0.25
"""A token's rolling minute is a quarter of a second longer than the API's: requests sent on time
may reach the API bunched up by the network and its scheduling."""
_TOKEN_GAP = 0.99
"""A token's requests are never closer than 0.99 of its mean spacing: spread evenly (60 a minute is
one a second, never a burst of 60 in the first seconds, never more than 1% above the even pace),
with 1% to make up for a late one (the loop's delays are a few milliseconds a second)."""


class Slots:
    """When a sender may send: at most ``n`` requests in any rolling ``window_s``, and never two
    closer than ``gap_s``.

    ``Slots(rps)`` counts a rolling second, as the API's per-account limit would: for a whole-number
    rate, ``n = rps`` and the window is 1.02 s, so any ``rps + 1`` consecutive requests span more
    than a second, with 20 ms to spare for requests that arrive bunched up against how they were
    sent (the loop, the network, the API's own scheduling). Spacing every request ``1.02/rps``
    apart would guarantee the same, but every delay in sending one (the loop is busy) would then
    push all the later ones back too, and those delays add up to several percent of the quota
    (``bench/`` B2); here a late request only moves the one ``n`` places after it. The gap, 0.8 of
    the mean spacing, keeps a sender that was idle from opening with a burst.

    ``Slots.per_minute(rpm)`` is a token's pace: ``rpm`` requests in any rolling minute (plus
    ``_TOKEN_SLACK_S``), never two closer than 0.99 of ``60/rpm`` seconds.
    """

    def __init__(
        self,
        rps: float,
        sent: deque[float] | None = None,
        *,
        window: tuple[int, float, float, float] | None = None,
    ) -> None:
        if window is None:
            n = max(1, min(_MAX_WINDOW_REQUESTS, math.floor(rps)))
            window_s = _WINDOW_MARGIN * n / rps
            window = (n, window_s, _MIN_GAP * window_s / n, window_s / n)
        self.n, self.window_s, self.gap_s, self.spacing_s = window
        self.sent: deque[float] = sent if sent is not None else deque()
        """Loop times of the requests sent within the last window, oldest first."""

    @classmethod
    def per_minute(cls, rpm: float, sent: deque[float] | None = None) -> Slots:
        n = max(1, min(_MAX_WINDOW_REQUESTS, math.floor(rpm)))
        spacing_s = _MINUTE_S / rpm
        window = (n, n * spacing_s + _TOKEN_SLACK_S, _TOKEN_GAP * spacing_s, spacing_s)
        return cls(rpm / _MINUTE_S, sent, window=window)

    def wait_s(self, now: float) -> float:
        """How long from ``now`` until the next request may go."""
        sent = self.sent
        while sent and sent[0] <= now - self.window_s:
            sent.popleft()
        if not sent:
            return 0.0
        ready = sent[-1] + self.gap_s
        if len(sent) >= self.n:
            ready = max(ready, sent[-self.n] + self.window_s)
        return max(0.0, ready - now)

    def take(self, now: float) -> None:
        self.sent.append(now)

    def seeded(self, now: float) -> Slots:
        """These slots with a full window of requests assumed sent, evenly, up to ``now``.

        For a token this process has just taken over: whoever held it before may have used its
        whole window, as late as its pace allowed (``n`` requests ``gap_s`` apart, the last one
        now). No window then holds more of its requests than this history does, so what this
        process adds never takes the token over its limit. The first request waits about
        ``window_s - (n - 1) * gap_s`` (1.8 s for 60 a minute), then the pace goes on evenly
        (docs/design.md#scaling).
        """
        assumed = (now - k * self.gap_s for k in range(self.n))
        history = sorted({*self.sent, *assumed})
        shape = (self.n, self.window_s, self.gap_s, self.spacing_s)
        return Slots(0.0, deque(t for t in history if t > now - self.window_s), window=shape)

    async def acquire(self) -> None:
        """Wait for the next slot and take it (a sleep never ends early: one wait is enough)."""
        loop = asyncio.get_running_loop()
        wait_s = self.wait_s(loop.time())
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        self.take(loop.time())


class Pace:
    """One token's pace in this process: its ``Slots`` and how long it backs off after a 429.

    A 429 sends only this token away, for ``Retry-After`` or, without one, a capped exponential
    backoff with full jitter (``DCR_RETRY_BASE_MS``, doubling per 429 in a row, at most
    ``DCR_RETRY_CAP_MS``); an accepted request ends the row.
    """

    def __init__(self, slots: Slots | None) -> None:
        self.slots = slots
        """None: the token is not paced (no per-token limit configured)."""
        self.blocked_until = 0.0
        """Loop time before which the token must not be used (after a 429)."""
        self.throttles = 0
        """429s in a row."""
        self.requests = 0
        """Requests sent on it by this process (a metric)."""

    def wait_s(self, now: float) -> float:
        wait_s = self.slots.wait_s(now) if self.slots is not None else 0.0
        return max(wait_s, self.blocked_until - now)

    def take(self, now: float) -> None:
        self.requests += 1
        if self.slots is not None:
            self.slots.take(now)

    def untake(self) -> None:
        """The request just taken did not go (token sharing: its claim was refused)."""
        self.requests -= 1
        if self.slots is not None and self.slots.sent:
            self.slots.sent.pop()

    def hold(self, until: float) -> None:
        """Nothing goes on the token before loop time ``until`` (or a later hold)."""
        self.blocked_until = max(self.blocked_until, until)

    def throttled(
        self,
        now: float,
        retry_after_s: float | None,
        backoff: tuple[float, float],
        rng: random.Random,
    ) -> float:
        """Back off after a 429 (``backoff``: base and cap, seconds); returns for how long."""
        self.throttles += 1
        base_s, cap_s = backoff
        bound = min(cap_s, base_s * 2 ** min(self.throttles - 1, 30))
        delay = max(rng.uniform(0, bound), retry_after_s or 0.0)
        self.hold(now + delay)
        return delay

    def accepted(self) -> None:
        self.throttles = 0
