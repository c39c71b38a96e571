"""``DCR_METRICS_PER_ACCOUNT=off``: one series per metric however many accounts
(docs/operations.md#metrics)."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from stream.held import PoolReport
from stream.metrics import Metrics
from tests.support.metrics import idle_state

ACCOUNTS = [f"acct-{n:04d}" for n in range(1000)]


def pool(n: int) -> PoolReport:
    return PoolReport(
        live=1,
        slots=10,
        mints=1,
        mints_refused=0,
        mints_throttled=0,
        mints_held_back=0,
        requests={0: n, 1: 1},
        forbidden={},
        waiting=None,
        auth_refused=0,
    )


def scrape(per_account: bool) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    metrics = Metrics()
    for n, account in enumerate(ACCOUNTS):
        metrics.counts.delivered[account] = 500
        metrics.counts.bump(metrics.counts.requests, (account, "2xx"), 1 + n % 2)
    state = idle_state(
        rates=lambda: dict.fromkeys(ACCOUNTS, 10.0),
        label_registries=lambda: {a: (3, float(n)) for n, a in enumerate(ACCOUNTS)},
        pools=lambda: {a: pool(n) for n, a in enumerate(ACCOUNTS)},
    )
    metrics.watch(state, per_account=per_account)
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def series_per_account(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> int:
    return sum(1 for _, labels in samples if any(k == "account" for k, _ in labels))


def test_per_account_series_grow_with_the_accounts() -> None:
    samples = scrape(per_account=True)
    assert samples[("dcr_records_delivered_total", (("account", "acct-0007"),))] == 500
    assert series_per_account(samples) >= 10 * len(ACCOUNTS)


def test_off_merges_every_account_and_slot_into_one_series() -> None:
    samples = scrape(per_account=False)
    assert series_per_account(samples) < 40  # one per metric and label set, not per account
    assert not any(re.match(r"acct-", v) for _, labels in samples for _, v in labels)
    assert samples[("dcr_records_delivered_total", (("account", "*"),))] == 500 * len(ACCOUNTS)
    assert samples[("dcr_api_requests_total", (("account", "*"), ("status_class", "2xx")))] == (
        1500
    )
    assert samples[("dcr_token_requests_total", (("account", "*"), ("slot", "*")))] == (
        sum(range(1000)) + 1000
    )
    # An age is the oldest, not a sum; a rate is the sum.
    ages = [v for (name, _), v in samples.items() if name.endswith("_age_seconds")]
    assert ages == [999.0]
    assert samples[("dcr_rate_limit_rps", (("account", "*"),))] == 10_000
