"""Token sharing's rule (``stream.sharing``): the first claim of a token in each bucket is granted,
and no token then carries more than its minute, whatever the claims."""

from __future__ import annotations

import random

import pytest

from stream.sharing import Decider

BUCKET_MS = Decider(60).bucket_ms


def test_the_first_claim_of_a_token_in_a_bucket_is_granted_and_the_others_refused() -> None:
    decider = Decider(60)
    start = 1_000 * BUCKET_MS
    assert decider.decide(b"c|a|0", start + 10) == (True, (BUCKET_MS - 10) / 1000)
    assert decider.decide(b"c|a|0", start + 500)[0] is False
    assert decider.decide(b"c|a|1", start + 600)[0] is True  # another token
    assert decider.decide(b"c|b|0", start + 700)[0] is True  # another account's token 0
    assert decider.decide(b"c|a|0", start + BUCKET_MS)[0] is True  # the next bucket
    assert decider.decide(b"c|a|0", start + 900)[0] is False  # a broker clock that stepped back


def test_two_readers_that_start_at_different_claims_decide_the_later_ones_alike() -> None:
    """A replica that starts reads from a few seconds back: from the next bucket on it decides
    every claim as the replicas that read all of them."""
    rng = random.Random(7)
    claims = sorted(rng.randrange(0, 30 * BUCKET_MS) for _ in range(400))
    whole, late = Decider(60), Decider(60)
    joined = claims[150]
    for at in claims:
        decided = whole.decide(b"c|a|0", at)
        if at >= joined:
            seen = late.decide(b"c|a|0", at)
            if at // BUCKET_MS > joined // BUCKET_MS:
                assert seen == decided


def test_a_bucket_is_1_02_s_and_a_grant_is_used_until_1_17_s_after_it_began() -> None:
    decider = Decider(60)
    assert decider.bucket_ms == 1020
    assert decider.send_by_s == pytest.approx(1.17)
    assert decider.usable_s(1.02) == pytest.approx(1.17)  # claimed as its bucket opened
    assert decider.usable_s(0.001) == pytest.approx(0.151)  # claimed as it closed


@pytest.mark.parametrize("per_minute", [60, 600, 30, 59.5, 7])
def test_no_rolling_minute_holds_more_requests_of_a_token_than_its_limit(
    per_minute: float,
) -> None:
    """Claims at random times, three replicas' worth: the requests granted, each sent as late as
    its grant may be used (or at random before that), never number more than the limit in any
    60 s, however fast or slow the pace."""
    n = int(per_minute)
    rng = random.Random(11)
    decider = Decider(per_minute)
    span_ms = 10 * 60_000
    claims = sorted(rng.randrange(0, span_ms) for _ in range(30 * n))
    for latest in (True, False):
        sent = []
        for at in claims:
            granted, next_s = decider.decide(f"c|a|{latest}".encode(), at)
            usable_s = decider.usable_s(next_s)
            if granted and usable_s >= 0:  # else it is never used: too late in its bucket
                sent.append(at / 1000 + (usable_s if latest else rng.uniform(0, usable_s)))
        sent.sort()
        assert len(sent) > 3 * n
        assert all(later - first > 60.0 for first, later in zip(sent, sent[n:], strict=False))


@pytest.mark.parametrize("per_minute", [60, 600, 30, 59.5, 7])
def test_the_worst_case_keeps_the_limit_by_the_arrival_margin(per_minute: float) -> None:
    """Claims as each bucket opens; the first ``n`` used as late as they may be and the rest at
    once: any ``n + 1`` still reach the API more than 60 s apart."""
    n = int(per_minute)
    decider = Decider(per_minute)
    sent = []
    for k in range(3 * n):
        at = k * decider.bucket_ms
        granted, next_s = decider.decide(b"c|a|0", at)
        assert granted
        sent.append(at / 1000 + (decider.usable_s(next_s) if k < n else 0.0))
    sent.sort()
    spans = [later - first for first, later in zip(sent, sent[n:], strict=False)]
    assert 60.0 < min(spans) < 60.05
