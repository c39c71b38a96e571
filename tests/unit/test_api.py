"""Statuses, Retry-After and backoff: pure parts of the API client and the delivery engine."""

from __future__ import annotations

import random

import pytest

from stream.api import Response, parse_retry_after
from stream.delivery import Backoff


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, "ok"),
        (201, "ok"),
        (204, "ok"),
        (400, "reject"),
        (413, "reject"),
        (422, "reject"),
        (401, "auth"),
        (403, "auth"),
        (404, "retry"),
        (408, "retry"),
        (425, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (0, "retry"),
    ],
)
def test_kind_of_each_status(status: int, kind: str) -> None:
    assert Response(status).kind == kind


def test_retry_after_in_seconds_and_as_a_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_backoff_is_jittered_capped_and_respects_retry_after() -> None:
    backoff = Backoff(base_s=0.5, cap_s=4.0)
    rng = random.Random(1)
    delays = [backoff.delay(attempt, None, rng) for attempt in range(1, 50)]
    assert all(0 <= d <= 4.0 for d in delays)
    assert max(delays) > 2.0  # the cap is reached, not just the base
    assert backoff.delay(1, 9.0, rng) == 9.0


def test_a_lane_halves_its_rate_on_429_and_recovers_after_a_quiet_spell() -> None:
    from stream.quota import Lane

    lane: Lane[int] = Lane(10.0)
    lane.throttled(now=100.0)
    lane.throttled(now=100.5)
    assert lane.rps == 2.5
    for _ in range(10):
        lane.throttled(now=101.0)
    assert lane.rps == 1.0  # never below a tenth
    lane.accepted(now=104.0)
    assert lane.rps == 1.0  # not yet: 5 s must pass without a 429
    for _ in range(30):
        lane.accepted(now=106.5)
    assert lane.rps == 10.0
