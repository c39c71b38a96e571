"""Scenario 6: tokens that expire every few seconds during the run (minted from a key pair,
``DCR_API_KEY_ID`` + ``DCR_API_KEY``). Each expiry costs a 401 and a new mint (docs/design.md#auth);
the API allows 10 mints per account per 30 minutes, which the sandbox enforces, so the run is sized
to need fewer: about one mint per account per ``LIFETIME_S`` of sending."""

from __future__ import annotations

import secrets
import time

import pytest

from tests.support.scenario import DEADLINE_S, SOAK, ScenarioFactory, sized
from tests.support.verifier import conclude, verify, wait_complete

pytestmark = [pytest.mark.faults, pytest.mark.integration]

EVENTS = sized(15_000, 60_000)
PARTITIONS = 4
LIFETIME_S = 10.0 if SOAK else 5.0
MINT_LIMIT = 10


def test_expiring_tokens_lose_nothing(scenario: ScenarioFactory) -> None:
    started = time.monotonic()
    api_key = secrets.token_hex(16)
    run = scenario(
        PARTITIONS,
        static_token=None,
        key_id="key-1",
        api_key=api_key,
        token_lifetime_s=LIFETIME_S,
    )
    sandbox, ledger = run.sandbox, run.ledger
    run.produce(EVENTS, invalid_every=50)
    # About 1,000 records a second (2 accounts x 2 requests x 250): the run takes several lifetimes.
    service = run.service(
        api_token="",
        api_key_id="key-1",
        api_key=api_key,
        rate_limit_rps="2",
        batch_max_records="250",
    )
    wait_complete(ledger, sandbox, run.group, DEADLINE_S)
    stats = sandbox.run(sandbox.sandbox.stats)
    minted = {account: s.tokens.get("200", 0) for account, s in stats.accounts.items()}
    report = verify(
        scenario="6. expiring tokens",
        ledger=ledger,
        sandbox=sandbox,
        group=run.group,
        started=started,
        notes={"token_lifetime_s": LIFETIME_S, "minted_per_account": minted},
    )
    conclude(report, service)
    assert stats.totals.requests.get("401", 0) > 0, "no token expired during the run"
    assert all(2 <= n <= MINT_LIMIT for n in minted.values()), minted
    assert "429" not in stats.totals.tokens, "the mint limit was hit"
