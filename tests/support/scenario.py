"""An end-to-end test's set-up in one call: a fresh topic and group on the session broker, the
sandbox, the ``Ledger`` that produces into the topic, and ``dcr-stream run`` against the three::

    def test_every_event_is_delivered(scenario: ScenarioFactory) -> None:
        run = scenario(partitions=4)
        run.produce(20_000, invalid_every=50)
        service = run.service(rate_limit_rps="20")
        wait_until(run.delivered(), timeout_s=RUN_TIMEOUT_S, what="deliveries")
        run.wait_committed(timeout_s=RUN_TIMEOUT_S)

The API is one of two, chosen when the scenario starts:

- by default the fast sandbox of ``sandbox_thread`` (one static token, 1000 requests a second, no
  per-token limit), the service's paces and waits cut to match (``service_factory``), and events
  for both ``ACCOUNTS``;
- with ``documented=True`` the sandbox with the API's documented limits (``DOCUMENTED``), the
  service at its own paces (its defaults are the documented ones) on v2 and the account's ten
  static tokens (``MINTED``: on tokens minted from its key pair instead), and events for that one
  ``ACCOUNT``, whose figures are then the whole pool's.

``scenario``'s keywords are ``SandboxConfig`` fields over those; ``Scenario.service``'s are the
service's settings over the suite's, so a test names only what it changes.

The fault scenarios share their sizes and deadline here too: bounded by default, so that the suite
runs in a few minutes on a 2-core machine; ``DCR_SOAK=1`` runs every scenario at its soak size (and
the API outage at its full 30 s).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import pytest

from stream.sandbox.command import add_parser
from tests.support.events import ACCOUNTS, LABEL, Ledger, events
from tests.support.kafka import Broker, Offsets, wait_committed
from tests.support.sandbox import SandboxThread
from tests.support.service import Service

__all__ = [
    "ACCOUNT",
    "API_KEY",
    "DEADLINE_S",
    "DOCUMENTED",
    "FAST_SESSION",
    "KEY_ID",
    "MINTED",
    "SOAK",
    "TOKENS",
    "Scenario",
    "ScenarioFactory",
    "scenario",
    "sized",
]

SOAK = os.environ.get("DCR_SOAK") == "1"

DEADLINE_S = 1800.0 if SOAK else 300.0
"""The longest a fault scenario may take to complete; a bound on a wait, never a sleep."""

FAST_SESSION = '{"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}'
"""librdkafka pass-through for scenarios that kill or add replicas: a dead member's partitions
and token slots move after 6 s (the broker's minimum) instead of librdkafka's default 45 s."""


def sized(bounded: int, soak: int) -> int:
    return soak if SOAK else bounded


ACCOUNT = ACCOUNTS[0]
"""The one account of a documented scenario."""
KEY_ID, API_KEY = "documented-key", "documented-api-key"
TOKENS = tuple(f"documented-token-{i}" for i in range(10))
"""The account's static tokens: as many as its pool mints (``DCR_TOKEN_POOL_SIZE``)."""


def _documented_limits() -> dict[str, Any]:
    """The limits ``dcr-stream sandbox`` starts with, which are the API's documented ones.
    ``SandboxConfig``'s own defaults differ on purpose (no per-token limit, a per-account one), so
    that a test on one static token is not held to them."""
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["sandbox"])
    limits = ("rate_limit_rps", "token_rate_limit", "token_window_s", "record_rate_limit")
    return {name: getattr(args, name) for name in (*limits, "mint_limit", "mint_window_s")}


DOCUMENTED: dict[str, Any] = {
    **_documented_limits(),
    "static_token": None,
    "static_tokens": TOKENS,
    "key_id": KEY_ID,
    "api_key": API_KEY,
    # Known labels: the service's label registry reads them at once, so no record is probed.
    "labels": {ACCOUNT: frozenset({LABEL})},
}
"""``SandboxConfig`` fields for the API's documented limits (docs/api.md#quota: per token 60 batch
requests a minute and 100 single records a second, 10 mints per account in 30 minutes, no
per-account quota), accepting ``ACCOUNT``'s static ``TOKENS`` and minting from its key pair."""

MINTED = {"api_token": "", "api_key_id": KEY_ID, "api_key": API_KEY}
"""Service settings for a documented scenario: tokens minted from the key pair, not the static
ones."""


class Scenario:
    """One test's run: ``topic`` and ``group`` are fresh, ``sandbox`` is started, ``ledger``
    produces into ``topic``. Services start when asked, in ``group``, reading every topic of the
    scenario."""

    def __init__(
        self,
        *,
        kafka: Broker,
        partitions: int,
        documented: bool,
        group: str,
        sandbox: SandboxThread,
        topic_factory: Callable[..., str],
        service_factory: Callable[..., Service],
    ) -> None:
        self.kafka = kafka
        self.documented = documented
        self.group = group
        self.sandbox = sandbox
        self.accounts = (ACCOUNT,) if documented else ACCOUNTS
        """Whose events ``produce`` makes."""
        self._topic_factory = topic_factory
        self._service_factory = service_factory
        self._made = 0
        self.ledger = Ledger(kafka.bootstrap_servers, topic_factory(partitions), partitions)
        self.ledgers = [self.ledger]
        """One per topic: ``ledger``'s first, then those of ``new_topic``."""

    @property
    def topic(self) -> str:
        return self.ledger.topic

    @property
    def partitions(self) -> int:
        return self.ledger.partitions

    def new_topic(self, partitions: int = 1) -> Ledger:
        """Another fresh topic of the scenario (deleted at teardown), and its ``Ledger``, which
        sends through the same producer as ``ledger``."""
        self.ledgers.append(self.ledger.beside(self._topic_factory(partitions), partitions))
        return self.ledgers[-1]

    def service(self, **settings: str) -> Service:
        """``dcr-stream run`` in the scenario's group, on every topic of the scenario, against
        its sandbox; ``settings`` over the suite's (``DCR_*``, in lower case without the prefix)."""
        if self.documented:
            settings = {"api_token": ",".join(TOKENS), "api_version": "v2"} | settings
        topics = ",".join(ledger.topic for ledger in self.ledgers)
        return self._service_factory(
            self.sandbox.url, topics, self.group, documented=self.documented, **settings
        )

    def produce(
        self,
        count: int,
        *,
        to: Ledger | None = None,
        invalid_every: int = 0,
        now_ms: int | None = None,
        fields: Mapping[str, object] | None = None,
    ) -> set[str]:
        """``count`` more events (``tests.support.events.events``, numbered on from the last)
        through ``to`` (the scenario's ``ledger`` unless given); their ids."""
        made = events(
            count,
            start=self._made,
            invalid_every=invalid_every,
            now_ms=now_ms,
            accounts=self.accounts,
            fields=fields,
        )
        self._made += count
        return (to or self.ledger).produce(made)

    def delivered(self, ids: Iterable[str] | None = None) -> Callable[[], bool]:
        """A condition to wait for: each of ``ids`` (by default every valid event produced so
        far, on any of the scenario's topics) accepted by the sandbox at least once."""
        wanted = set().union(*(ledger.valid for ledger in self.ledgers)) if ids is None else {*ids}

        def accepted() -> bool:
            # The count first: it is cheap, and the receivers are a copy of every record.
            return (
                self.sandbox.accepted_count() >= len(wanted)
                and set(self.sandbox.accepted_receivers()) >= wanted
            )

        return accepted

    def offsets(self) -> Offsets:
        """The group's committed offsets and the end offsets of ``topic`` (close it after)."""
        return Offsets(self.kafka.bootstrap_servers, self.group, self.topic, self.partitions)

    def wait_committed(self, *, timeout_s: float) -> None:
        """Wait until the group committed every partition of every topic of the scenario to its
        end."""
        for ledger in self.ledgers:
            wait_committed(
                self.kafka.bootstrap_servers,
                self.group,
                ledger.topic,
                ledger.partitions,
                timeout_s=timeout_s,
            )


class ScenarioFactory(Protocol):
    def __call__(
        self, partitions: int = 1, *, documented: bool = False, **sandbox: Any
    ) -> Scenario: ...


@pytest.fixture
def scenario(
    kafka: Broker,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
    sandbox_thread: Callable[..., SandboxThread],
    service_factory: Callable[..., Service],
) -> ScenarioFactory:
    """``scenario(partitions=1, documented=False, **SandboxConfig fields)``: a started
    ``Scenario``. Its topics are deleted, its sandbox stopped and its services killed at teardown,
    by the factories it was made with."""

    def start(partitions: int = 1, *, documented: bool = False, **sandbox: Any) -> Scenario:
        return Scenario(
            kafka=kafka,
            partitions=partitions,
            documented=documented,
            group=group_factory(),
            sandbox=sandbox_thread(**(DOCUMENTED | sandbox if documented else sandbox)),
            topic_factory=topic_factory,
            service_factory=service_factory,
        )

    return start
