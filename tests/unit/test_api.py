"""Statuses, Retry-After and backoff: pure parts of the API client and the delivery engine."""

from __future__ import annotations

import random

import pytest

from stream.api import refused_field
from stream.retry import Backoff
from stream.wire import Response, parse_retry_after


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


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            b'{"field": "label_id", "message": "Request body is invalid", "status": "error"}',
            "label_id",
        ),
        (b'{"field": "call_records[0].label_id", "message": "m", "status": 400}', "label_id"),
        (
            b'{"field": "call_records[3].ends_at", "message": "bad label_id", "status": 400}',
            "ends_at",
        ),
        (b'{"slug": "bad_request", "message": "label_id is unknown"}', None),
        (b'{"field": null, "message": "label"}', None),
        (b'{"field": 3}', None),
        (b"[]", None),
        (b"label_id refused", None),
        (b"", None),
    ],
)
def test_a_refusal_is_read_by_its_field_only(body: bytes, field: str | None) -> None:
    assert refused_field(body) == field
