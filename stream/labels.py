"""Which label ids each account may use: its label registry (docs/design.md#labels).

The API refuses a whole batch when one record carries a label id that is not a dynamic label of the
account, and isolating that record costs a bisection (about 2·log2(500) requests). So records pass
this gate between validation and batching:

- a label the registry lists (dynamic, not deleted), or that the API accepted in a probe, passes;
- a label the API refused in a probe (remembered for ``refresh_s``) is dead-lettered at once;
- any other label waits for a registry refresh that started after the record arrived (refreshes on
  a miss are coalesced: at most one per account per ``MISS_REFRESH_S``); if that refresh does not
  list it either, the record is dead-lettered as ``unknown_label`` before it can spoil a batch;
- while the registry cannot be read (the endpoint fails, is forbidden, the token may not list
  labels), a label it never listed is *unconfirmed*: its records wait, apart from every other
  record, while one of them is sent alone as a probe. Accepted: the label is confirmed and the
  others go on. Refused naming the label: the label is refused and the others are dead-lettered
  without being sent. A label costs at most one refused request per account that way, plus one per
  record that the API refuses for a reason of its own.

The registry is refreshed every ``refresh_s``; a label created in the console is used within
seconds of the first record that carries it. ``DCR_ALLOWED_LABEL_IDS`` overrides it: an account
listed there is checked against that list by validation, and never here.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from stream.api import ApiClient
from stream.batching import Pending

__all__ = ["MISS_REFRESH_S", "LabelGate", "Probe", "due"]

S = TypeVar("S")
_log = logging.getLogger("stream.labels")

MISS_REFRESH_S = 5.0
"""At most one refresh per account this often because of records with unknown labels."""

_PAGE_SIZE = 1000
"""Labels per page: the endpoint's own default and, we assume, its maximum."""

_TICK_S = 1.0
"""The periodic refresh looks for accounts due this often (at most)."""

_LOG_EVERY_S = 60.0
"""A registry that cannot be read is logged at most this often per account."""

Probe = Literal["accepted", "label_refused", "record_refused", "gone"]
"""What a probe came to: the API took the record; refused it naming its label; refused it for a
reason of its own; or it never went (it expired on the way and was dead-lettered)."""


@dataclass(slots=True)
class _Account(Generic[S]):
    known: frozenset[str] = frozenset()
    """Dynamic, not deleted labels, as the registry last listed them."""
    loaded_at: float | None = None
    """When the last refresh that succeeded started (None: never)."""
    readable: bool = True
    """False while the last refresh failed: unlisted labels are probed, not waited for."""
    refresh: asyncio.Task[None] | None = None
    refresh_started: float = float("-inf")
    waiting: list[tuple[float, Pending[S]]] = field(default_factory=list)
    """Records waiting for a refresh that started after them, with when they arrived."""
    unconfirmed: dict[str, list[Pending[S]]] = field(default_factory=dict)
    """Label → its records waiting for a probe's answer (the first is the probe)."""
    confirmed: set[str] = field(default_factory=set)
    """Labels the API accepted in a probe while the registry could not be read."""
    refused: dict[str, float] = field(default_factory=dict)
    """Label → until when the API's refusal of it is believed."""
    logged_at: float = float("-inf")
    refreshes_failed: int = 0


class LabelGate(Generic[S]):
    """Holds back records whose label the account may not own; see the module docstring.

    Records leave through the callables it is given: ``release`` (batch them), ``refuse``
    (dead-letter them as ``unknown_label``), or ``probe`` (send one alone, say what came of it).
    """

    def __init__(
        self,
        client: ApiClient,
        *,
        refresh_s: float,
        overridden: Iterable[str],
        release: Callable[[list[Pending[S]]], None],
        refuse: Callable[[Pending[S]], None],
        probe: Callable[[Pending[S]], Coroutine[Any, Any, Probe]],
    ) -> None:
        self._client = client
        self._refresh_s = refresh_s
        self._overridden = frozenset(overridden)
        self._release = release
        self._refuse = refuse
        self._probe = probe
        self._accounts: dict[str, _Account[S]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self.refreshes: dict[tuple[str, str], int] = {}
        """(account, ``ok`` | ``failed``) → registry refreshes."""
        self.probes: dict[tuple[str, str], int] = {}
        """(account, what came of it) → probe requests."""

    # -- the hot path ----------------------------------------------------------------------------

    def admit(self, items: list[Pending[S]]) -> list[Pending[S]]:
        """The records that may be batched now; the others are held (or refused) here."""
        admitted: list[Pending[S]] = []
        accounts, overridden = self._accounts, self._overridden
        for item in items:
            record = item.record
            account = record.account
            state = accounts.get(account)
            if account in overridden or (
                state is not None
                and (record.label_id in state.known or record.label_id in state.confirmed)
            ):
                admitted.append(item)
            else:
                self._hold(account, item)
        return admitted

    # -- records the registry does not list --------------------------------------------------------

    def _hold(self, account: str, item: Pending[S]) -> None:
        state = self._account(account)
        if state.readable:
            state.waiting.append((asyncio.get_running_loop().time(), item))
            self._refresh_soon(account, state)
        else:
            self._hold_for_probe(account, state, item)

    def _hold_for_probe(self, account: str, state: _Account[S], item: Pending[S]) -> None:
        """Refuse ``item`` if a probe refused its label lately; else wait for (or start) one."""
        label = item.record.label_id
        until = state.refused.get(label)
        if until is not None:
            if asyncio.get_running_loop().time() < until:
                self._refuse(item)
                return
            del state.refused[label]
        held = state.unconfirmed.get(label)
        if held is None:
            state.unconfirmed[label] = [item]
            self._spawn(self._run_probes(account, state, label))
        else:
            held.append(item)

    async def _run_probes(self, account: str, state: _Account[S], label: str) -> None:
        """Probe ``label`` with one of its records at a time until the API says something about
        the label itself, or none of its records is left. The probe callback finishes the probed
        record itself (delivered, or dead-lettered); the others wait in ``unconfirmed``."""
        while held := state.unconfirmed.get(label):
            outcome = await self._probe(held.pop(0))
            self.probes[(account, outcome)] = self.probes.get((account, outcome), 0) + 1
            if label not in state.unconfirmed:  # a refresh settled the label meanwhile
                return
            if outcome == "accepted":
                state.confirmed.add(label)
                self._release(state.unconfirmed.pop(label))
            elif outcome == "label_refused":
                state.refused[label] = asyncio.get_running_loop().time() + self._refresh_s
                _log.warning(
                    "account %s: the API refused label %s; its records are dead-lettered as "
                    "unknown_label for %.0f s",
                    account,
                    label,
                    self._refresh_s,
                )
                for item in state.unconfirmed.pop(label):
                    self._refuse(item)
        state.unconfirmed.pop(label, None)

    # -- refreshing the registry -------------------------------------------------------------------

    def _account(self, account: str) -> _Account[S]:
        state = self._accounts.get(account)
        if state is None:
            state = self._accounts[account] = _Account()
            if self._ticker is None:
                self._ticker = asyncio.get_running_loop().create_task(self._refresh_every())
        return state

    def _refresh_soon(self, account: str, state: _Account[S]) -> None:
        """Make sure a refresh starts after now: at once, or when the running one ends, or
        ``MISS_REFRESH_S`` after the last one started, whichever is latest."""
        if state.refresh is None:
            state.refresh = asyncio.get_running_loop().create_task(self._refresh(account, state))
            state.refresh.add_done_callback(_log_failure)

    async def _refresh(self, account: str, state: _Account[S]) -> None:
        try:
            while True:
                wait_s = state.refresh_started + MISS_REFRESH_S - asyncio.get_running_loop().time()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                started = asyncio.get_running_loop().time()
                state.refresh_started = started
                labels = await self._load(account, state)
                self._settle(account, state, started, labels)
                if not any(arrived > started for arrived, _ in state.waiting):
                    return
        finally:
            state.refresh = None

    async def _load(self, account: str, state: _Account[S]) -> frozenset[str] | None:
        """Every page of the account's labels, or None when the registry cannot be read."""
        found: set[str] = set()
        page = 1
        while True:
            answer = await self._client.get_labels(account, page=page, limit=_PAGE_SIZE)
            if isinstance(answer, str):
                self._failed(account, state, answer)
                return None
            # Any case, as the records' label ids (lower-cased by validation, docs/events.md).
            found.update(label.id.lower() for label in answer if label.usable)
            if len(answer) < _PAGE_SIZE:
                self.refreshes[(account, "ok")] = self.refreshes.get((account, "ok"), 0) + 1
                return frozenset(found)
            page += 1

    def _failed(self, account: str, state: _Account[S], reason: str) -> None:
        self.refreshes[(account, "failed")] = self.refreshes.get((account, "failed"), 0) + 1
        state.refreshes_failed += 1
        now = asyncio.get_running_loop().time()
        if now - state.logged_at >= _LOG_EVERY_S:
            state.logged_at = now
            _log.warning(
                "account %s: the label registry cannot be read (%s; %d failures); labels it never "
                "listed are probed, one record at a time",
                account,
                reason,
                state.refreshes_failed,
            )

    def _settle(
        self, account: str, state: _Account[S], started: float, labels: frozenset[str] | None
    ) -> None:
        """After a refresh that started at ``started``: release what it lists, refuse what it does
        not list and arrived before it started; the rest waits for the next refresh."""
        if labels is None:
            state.readable = False
            due = [item for arrived, item in state.waiting if arrived <= started]
            state.waiting = [(t, item) for t, item in state.waiting if t > started]
            for item in due:
                self._hold_for_probe(account, state, item)
            return
        state.known, state.loaded_at, state.readable = labels, started, True
        state.confirmed.clear()
        state.refused = {k: until for k, until in state.refused.items() if k not in labels}
        waiting = state.waiting + [
            (started, item)
            for label in [label for label in state.unconfirmed if label in labels]
            for item in state.unconfirmed.pop(label)
        ]
        state.waiting = []
        passed: list[Pending[S]] = []
        for arrived, item in waiting:
            if item.record.label_id in labels:
                passed.append(item)
            elif arrived <= started:
                self._refuse(item)
            else:
                state.waiting.append((arrived, item))
        if passed:
            self._release(passed)

    async def _refresh_every(self) -> None:
        """Refresh each registry ``refresh_s`` after its last refresh started, spread: at most
        twice the accounts' mean rate starts in one tick, the longest due first, so a platform's
        1,000 accounts (first read together at start-up) refresh a few a second, not in one
        burst (docs/design.md#labels)."""
        tick_s = min(_TICK_S, self._refresh_s)
        while True:
            await asyncio.sleep(tick_s)
            idle = {a: s.refresh_started for a, s in self._accounts.items() if s.refresh is None}
            now = asyncio.get_running_loop().time()
            for account in due(idle, len(self._accounts), now, self._refresh_s, tick_s):
                self._refresh_soon(account, self._accounts[account])

    # -- the rest ----------------------------------------------------------------------------------

    def start(self, accounts: Iterable[str]) -> None:
        """Start loading the registries of the accounts known at start (``DCR_CLIENT_ACCOUNT_ID``);
        the others are loaded when their first record arrives."""
        for account in accounts:
            if account not in self._overridden:
                self._refresh_soon(account, self._account(account))

    def registries(self) -> Mapping[str, tuple[int, float | None]]:
        """Account → (labels listed, seconds since the last successful refresh started)."""
        now = asyncio.get_running_loop().time()
        return {
            account: (len(s.known), None if s.loaded_at is None else now - s.loaded_at)
            for account, s in self._accounts.items()
        }

    def held(self) -> int:
        """Records held here now."""
        return sum(
            len(s.waiting) + sum(map(len, s.unconfirmed.values())) for s in self._accounts.values()
        )

    async def close(self) -> None:
        tasks = [t for t in (self._ticker, *self._tasks) if t is not None]
        tasks += [s.refresh for s in self._accounts.values() if s.refresh is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[None]) -> None:
    """A bug in a refresh or a probe would leave records held for good: say so loudly."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        _log.error("the label gate failed; records may be held", exc_info=exc)


def due(
    started: Mapping[str, float], accounts: int, now: float, refresh_s: float, tick_s: float
) -> list[str]:
    """The accounts whose refresh starts this tick: of those idle (``started``: when their last
    refresh started) and due (``refresh_s`` ago or more), the longest due first, at most twice the
    mean rate of ``accounts`` refreshing every ``refresh_s``."""
    per_tick = math.ceil(2 * accounts * tick_s / refresh_s)
    ready = sorted((t, a) for a, t in started.items() if now - t >= refresh_s)
    return [account for _, account in ready[:per_tick]]
