"""What a sandbox saw: the batches it accepted, in arrival order, and counters per account.

The rules never read it; tests, the demo and the benchmarks do, through ``Sandbox.accepted`` and
``Sandbox.stats`` or ``/_sandbox/accepted`` and ``/_sandbox/stats`` (docs/sandbox.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from msgspec import Struct

from stream.sandbox.batches import Accepted, Batch
from stream.sandbox.rules import TokenStats

__all__ = ["AccountStats", "Counters", "Ledger", "Stats"]


class AccountStats(Struct, frozen=True, kw_only=True, omit_defaults=True):
    requests: dict[str, int]
    """Batch requests by HTTP status; ``dropped`` counts connections cut by an outage."""
    tokens: dict[str, int]
    """Token requests by HTTP status."""
    labels: dict[str, int] = {}
    """Label list requests by HTTP status."""
    statuses: dict[str, int] = {}
    """Batch status requests by HTTP status."""
    records_accepted: int
    """By either endpoint."""
    throttled: int
    """Batch requests answered 429."""
    realtime_requests: dict[str, int] = {}
    """Single-record requests by HTTP status."""
    realtime_accepted: int = 0
    """Records accepted by the single-record endpoint (included in ``records_accepted``)."""
    throttled_by: dict[str, int] = {}
    """429s by cause: ``token`` (its own window), ``account`` (the per-account quota),
    ``injected`` (a 429 burst) for batch requests, ``realtime`` (a token's single-record window),
    and ``mint`` for refused mints."""
    token_use: dict[str, TokenStats] = {}
    """Per token label (``static-<i>``, ``minted-<n>``): its use, with the per-token limit on."""


class Stats(Struct, frozen=True, kw_only=True):
    accounts: dict[str, AccountStats]
    totals: AccountStats


@dataclass(slots=True)
class Counters:
    """One account's counters, as ``AccountStats`` shows them."""

    requests: Counter[str] = field(default_factory=Counter)
    tokens: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    records_accepted: int = 0
    throttled_by: Counter[str] = field(default_factory=Counter)
    realtime: Counter[str] = field(default_factory=Counter)
    """Single-record requests by HTTP status."""
    realtime_accepted: int = 0

    def add(self, other: Counters) -> None:
        self.requests.update(other.requests)
        self.tokens.update(other.tokens)
        self.labels.update(other.labels)
        self.statuses.update(other.statuses)
        self.records_accepted += other.records_accepted
        self.throttled_by.update(other.throttled_by)
        self.realtime.update(other.realtime)
        self.realtime_accepted += other.realtime_accepted

    def snapshot(self, token_use: dict[str, TokenStats] | None = None) -> AccountStats:
        return AccountStats(
            requests=dict(self.requests),
            tokens=dict(self.tokens),
            labels=dict(self.labels),
            statuses=dict(self.statuses),
            records_accepted=self.records_accepted,
            throttled=self.requests["429"],
            throttled_by=dict(self.throttled_by),
            token_use=token_use or {},
            realtime_requests=dict(self.realtime),
            realtime_accepted=self.realtime_accepted,
        )


class Ledger:
    """One run's record; a reset starts a new one."""

    _batches: list[Batch]
    """Accepted batches in arrival order."""
    _accounts: dict[str, Counters]
    _by_id: dict[str, Batch]

    def __init__(self) -> None:
        self._batches = []
        self._accounts = {}
        self._by_id = {}

    def counters(self, account: str) -> Counters:
        """The counters of ``account`` (lower-cased), made at its first request."""
        counters = self._accounts.get(account)
        if counters is None:
            counters = self._accounts[account] = Counters()
        return counters

    def keep(self, batch: Batch) -> None:
        self._batches.append(batch)
        counters = self.counters(batch.account)
        counters.records_accepted += batch.size
        if batch.path == "realtime":  # no batch id: there is no status to ask for
            counters.realtime_accepted += batch.size
        else:
            self._by_id[batch.batch_id] = batch

    def batches(self, account: str | None = None) -> list[Batch]:
        """Accepted batches (of ``account``, in any case), in arrival order."""
        if account is None:
            return list(self._batches)
        return [batch for batch in self._batches if batch.account == account.lower()]

    def batch(self, batch_id: str) -> Batch | None:
        """The accepted batch of that id, if any."""
        return self._by_id.get(batch_id)

    def accepted(self, account: str | None = None) -> list[Accepted]:
        """Every accepted record (of ``account``), in arrival order."""
        return [record for batch in self.batches(account) for record in batch.records()]

    def stats(self, token_use: Callable[[str], dict[str, TokenStats]] | None = None) -> Stats:
        """The counters per account and in total; ``token_use`` adds each account's tokens."""
        totals = Counters()
        for counters in self._accounts.values():
            totals.add(counters)
        return Stats(
            accounts={
                name: counters.snapshot(token_use(name) if token_use else None)
                for name, counters in self._accounts.items()
            },
            totals=totals.snapshot(),
        )
