"""Scenario 6: tokens that expire every few seconds during the run (minted from a key pair,
``DCR_API_KEY_ID`` + ``DCR_API_KEY``). Each expiry costs a 401 and a new mint (docs/design.md#auth);
the API allows 10 mints per account per 30 minutes, which the sandbox enforces, so the run is sized
to need fewer: about one mint per account per ``LIFETIME_S`` of sending."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import pytest

from tests.support.events import Ledger, events
from tests.support.kafka import Broker
from tests.support.sandbox import SandboxThread
from tests.support.scenario import DEADLINE_S, SOAK, sized
from tests.support.service import Service
from tests.support.verifier import conclude, verify, wait_complete

pytestmark = [pytest.mark.faults, pytest.mark.integration]

EVENTS = sized(15_000, 60_000)
PARTITIONS = 4
LIFETIME_S = 10.0 if SOAK else 5.0
MINT_LIMIT = 10


def test_expiring_tokens_lose_nothing(
    kafka: Broker,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
    sandbox_thread: Callable[..., SandboxThread],
    service_factory: Callable[..., Service],
) -> None:
    started = time.monotonic()
    topic, group = topic_factory(partitions=PARTITIONS), group_factory()
    api_key = secrets.token_hex(16)
    sandbox = sandbox_thread(
        static_token=None, key_id="key-1", api_key=api_key, token_lifetime_s=LIFETIME_S
    )
    ledger = Ledger(kafka.bootstrap_servers, topic, PARTITIONS)
    ledger.produce(events(EVENTS, invalid_every=50))
    # About 1,000 records a second (2 accounts x 2 requests x 250): the run takes several lifetimes.
    service = service_factory(
        sandbox.url,
        topic,
        group,
        api_token="",
        api_key_id="key-1",
        api_key=api_key,
        rate_limit_rps="2",
        batch_max_records="250",
    )
    wait_complete(ledger, sandbox, group, DEADLINE_S)
    stats = sandbox.run(sandbox.sandbox.stats)
    minted = {account: s.tokens.get("200", 0) for account, s in stats.accounts.items()}
    report = verify(
        scenario="6. expiring tokens",
        ledger=ledger,
        sandbox=sandbox,
        group=group,
        started=started,
        notes={"token_lifetime_s": LIFETIME_S, "minted_per_account": minted},
    )
    conclude(report, service)
    assert stats.totals.requests.get("401", 0) > 0, "no token expired during the run"
    assert all(2 <= n <= MINT_LIMIT for n in minted.values()), minted
    assert "429" not in stats.totals.tokens, "the mint limit was hit"
