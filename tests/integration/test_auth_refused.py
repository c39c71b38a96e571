"""An account the API refuses to mint for (docs/design.md#auth): its records are dead-lettered as
``auth_refused`` once its credentials have been refused for ``DCR_AUTH_GIVE_UP_S``, and the
accounts beside it on the same partitions are delivered and committed. Before, its records waited
for a token forever and held every partition's commits back."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.events import ACCOUNTS, Event, intent, valid
from tests.support.scenario import ScenarioFactory
from tests.support.service import get_text
from tests.support.verifier import verify, wait_complete

pytestmark = pytest.mark.integration

KEY_ID, API_KEY = "refused-test-key", "refused-test-api-key"
REFUSED = "8e2d3c4b-5a6f-4789-9abc-def012345678"
"""The third account: its key in the credentials file is not one the API knows (revoked)."""
EVENTS = 10_000
REFUSED_EVERY = 100
"""1% of the events are the refused account's."""
PARTITIONS = 4
GIVE_UP_S = 20
COMMITTED_WITHIN_S = 120.0


def mixed(count: int) -> Iterator[Event]:
    now_ms = time.time_ns() // 1_000_000
    for i in range(count):
        if i % REFUSED_EVERY == REFUSED_EVERY - 1:
            event = intent(i, now_ms, accounts=(REFUSED,))
            yield Event(f"refused-{i}", json.dumps(event).encode(), "auth_refused")
        else:
            yield valid(i, now_ms, accounts=ACCOUNTS)


def test_a_refused_account_is_dead_lettered_and_the_others_flow(
    scenario: ScenarioFactory, tmp_path: Path
) -> None:
    run = scenario(PARTITIONS, static_token=None, key_id=KEY_ID, api_key=API_KEY)
    credentials = tmp_path / "credentials.json"
    good = {"key_id": KEY_ID, "api_key": API_KEY}
    credentials.write_text(
        json.dumps({**dict.fromkeys(ACCOUNTS, good), REFUSED: good | {"api_key": "revoked"}})
    )
    started = time.monotonic()
    run.ledger.produce(mixed(EVENTS))
    service = run.service(
        api_token="",
        api_credentials_file=str(credentials),
        api_version="v2",
        auth_give_up_s=str(GIVE_UP_S),
    )

    wait_complete(run.ledger, run.sandbox, run.group, COMMITTED_WITHIN_S, "every offset committed")
    committed_s = time.monotonic() - started
    report = verify(
        scenario="an account refused",
        ledger=run.ledger,
        sandbox=run.sandbox,
        group=run.group,
        started=started,
        notes={"committed_s": round(committed_s, 1)},
    )
    report.show()
    report.check()
    assert report.dead_lettered == EVENTS // REFUSED_EVERY
    assert committed_s >= GIVE_UP_S  # given up on only once refused for DCR_AUTH_GIVE_UP_S
    ready = json.loads(get_text(service.http_port(), "/readyz"))
    assert ready == {"status": "ready", "auth_refused": [REFUSED]}
    metrics = service.metrics()
    assert metrics[f'dcr_account_auth_refused{{account="{REFUSED}"}}'] == 1
    assert metrics['dcr_records_dead_lettered_total{code="auth_refused",stage="api"}'] == (
        EVENTS // REFUSED_EVERY
    )
