"""Everything a sandbox's requests read and change, apart from the server itself."""

from __future__ import annotations

from stream.sandbox.clock import Clock
from stream.sandbox.config import SandboxConfig
from stream.sandbox.faults import Injector
from stream.sandbox.ledger import Ledger, Stats
from stream.sandbox.rules import Rules
from stream.sandbox.statuses import StatusRules

__all__ = ["State"]


class State:
    """The API's rules, the faults in force and the ledger, all read on ``clock``.

    Handlers hold the ``State``, never its parts, because ``reset`` replaces the parts: a reset is
    a new run made from the same config.
    """

    config: SandboxConfig
    clock: Clock
    rules: Rules
    faults: Injector
    ledger: Ledger
    statuses: StatusRules

    def __init__(self, config: SandboxConfig, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        """Back to the start: no records, counters or tokens; the configured faults and labels."""
        self.rules = Rules(self.config)
        self.faults = Injector(self.config.faults, seed=self.config.seed, clock=self.clock)
        self.ledger = Ledger()
        self.statuses = self.config.statuses

    def stats(self) -> Stats:
        """The ledger's counters, with each account's token use from the rules."""
        return self.ledger.stats(self.rules.token_stats)
