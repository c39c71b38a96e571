"""Token sharing's rule (``stream.sharing``): the first claim of a token in each bucket is granted,
and no token then carries more than its minute, whatever the claims."""

from __future__ import annotations

import random

from stream.sharing import SEND_WITHIN_S, Decider, bucket_s

BUCKET_MS = round(bucket_s(60) * 1000)


def test_the_first_claim_of_a_token_in_a_bucket_is_granted_and_the_others_refused() -> None:
    decider = Decider(BUCKET_MS)
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
    whole, late = Decider(BUCKET_MS), Decider(BUCKET_MS)
    joined = claims[150]
    for at in claims:
        decided = whole.decide(b"c|a|0", at)
        if at >= joined:
            seen = late.decide(b"c|a|0", at)
            if at // BUCKET_MS > joined // BUCKET_MS:
                assert seen == decided


def test_no_rolling_minute_holds_61_requests_of_a_token() -> None:
    """Claims at random times, three replicas' worth: the requests granted, each sent up to
    ``SEND_WITHIN_S`` after its claim, never number 61 in any 60 s."""
    rng = random.Random(11)
    decider = Decider(BUCKET_MS)
    claims = sorted(rng.randrange(0, 600_000) for _ in range(3_000))
    sent = sorted(
        at / 1000 + rng.uniform(0, SEND_WITHIN_S)
        for at in claims
        if decider.decide(b"c|a|0", at)[0]
    )
    assert len(sent) > 500
    assert all(later - first > 60.0 for first, later in zip(sent, sent[60:], strict=False))
