"""A batch status, as the reconciler asks for it and reads it (docs/design.md#reconciliation): what
each record's entry says (``classify``: a ``Verdict``), which original event it is about
(``match``), and the budget the status requests are paced by (``StatusBudget``).

The API documents the failure reasons, not their wording (docs/api.md#batch-status), and lists a
batch's records without the offsets they came from: a status is paired with its event by
(caller, receiver, label, starts_at), each side read the way the API may have written it. The
``stream.reconcile.Reconciler`` asks, reads the originals back (``stream.originals``) and
reports; ``dcr-stream status`` shows the same verdicts.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import msgspec
from confluent_kafka import Message

from stream.api import RecordStatus
from stream.pacing import Slots
from stream.secrets import Secret
from stream.tokens import Tokens

__all__ = [
    "Key",
    "Status",
    "StatusBudget",
    "Verdict",
    "classify",
    "match",
    "original_key",
    "status_key",
]

Status = Literal["delivered", "failed", "pending"]

_DELIVERED = frozenset({"success", "successful", "delivered", "pushed", "sent", "completed"})
_PENDING = frozenset({"", "pending", "processing", "queued", "in_progress", "accepted", "new"})
_FAILED = frozenset({"failed", "failure", "error", "rejected", "not_delivered", "undelivered"})
_REASONS = (
    # (words in the status's reason or message, code): the first that matches wins.
    (("not a truecaller user", "not truecaller user", "non truecaller"), "not_truecaller_user"),
    (("os not supported", "android only", "unsupported os"), "os_not_supported"),
    (("app version",), "app_version_not_supported"),
    (("failed to push", "push failed", "unreachable"), "push_failed"),
    (("invalid",), "invalid_input"),
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One record's status as the reconciler reads it."""

    status: Status
    code: str | None = None
    """For ``failed``: a code of stage ``status``."""
    message: str | None = None


def classify(record: RecordStatus) -> Verdict:
    """A status entry's verdict (docs/api.md#batch-status). The API documents the failure
    reasons, not their wording: a failure is coded by the words of its reason or message, and
    ``unknown_status`` when none fits; an unrecognised status word is a failure if its words name a
    reason, else still pending (it ends as ``unknown_status`` after ``DCR_STATUS_GIVE_UP_S``)."""
    info = record.status_info
    status = info.status.strip().lower().replace(" ", "_")
    message = info.message or info.reason
    if status in _DELIVERED:
        return Verdict("delivered", message=message)
    words = " ".join(filter(None, (info.reason, info.message, info.status)))
    words = words.lower().replace("_", " ")
    code = next((c for keys, c in _REASONS if any(k in words for k in keys)), None)
    if status in _FAILED:
        return Verdict("failed", code or "unknown_status", message)
    if status in _PENDING or code is None:
        return Verdict("pending", message=message)
    return Verdict("failed", code, message)


# -- matching ------------------------------------------------------------------------------------


class _Original(msgspec.Struct):
    """The fields of a call intent a status is matched on (the rest is ignored)."""

    caller: str = ""
    receiver: str = ""
    label_id: str = ""
    starts_at: int = 0


_original = msgspec.json.Decoder(_Original)

Key = tuple[str, str, str, int]


def _digits(number: str | None) -> str:
    return "".join(c for c in number or "" if c.isdigit())


def _millis(value: int | str | None) -> int:
    """``starts_at`` as epoch milliseconds: a number (seconds if plainly so), digits, or ISO."""
    if isinstance(value, str):
        if value.strip().isdigit():
            value = int(value.strip())
        else:
            with contextlib.suppress(ValueError):
                return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
            return -1
    if value is None:
        return -1
    return value * 1000 if 0 < value < 100_000_000_000 else value


def original_key(value: bytes | None) -> Key | None:
    """The match key of an original event's value; None if it cannot be read."""
    try:
        event = _original.decode(value or b"")
    except msgspec.DecodeError:
        return None
    return (
        _digits(event.caller),
        _digits(event.receiver),
        event.label_id.strip().lower(),
        event.starts_at,
    )


def status_key(record: RecordStatus) -> Key:
    return (
        _digits(record.caller_number or record.caller),
        _digits(record.receiver_number or record.receiver),
        (record.label_id or "").strip().lower(),
        _millis(record.starts_at),
    )


def match(
    originals: list[Message], statuses: list[RecordStatus]
) -> tuple[list[tuple[Message, RecordStatus | None]], int]:
    """Pair each original with its status by (caller, receiver, label, starts_at); equal keys pair
    in order. What is left on both sides pairs in order too (the API lists a batch's records as
    they were sent); an original without a status gets None (not listed yet: pending). Returns the
    pairs and how many statuses matched no original."""
    by_key: dict[Key, list[RecordStatus]] = {}
    for status in statuses:
        by_key.setdefault(status_key(status), []).append(status)
    pairs: list[tuple[Message, RecordStatus | None]] = []
    unmatched: list[int] = []
    for message in originals:
        found = by_key.get(original_key(message.value()) or ("", "", "", -1))
        if found:
            pairs.append((message, found.pop(0)))
        else:
            unmatched.append(len(pairs))
            pairs.append((message, None))
    left = [status for group in by_key.values() for status in group]
    left.sort(key=statuses.index)
    for index in unmatched:
        if left:
            pairs[index] = (pairs[index][0], left.pop(0))
    return pairs, len(left)


# -- the status budget ----------------------------------------------------------------------------


_ELSEWHERE_SHARE = 0.1
"""The part of a token's status budget a replica that holds no slot uses (token sharing)."""


class StatusBudget:
    """Status requests on the account's tokens, ``DCR_STATUS_REQUESTS_PER_MINUTE`` per token, paced
    apart from the batch quota: a status request never takes a batch request's slot
    (docs/design.md#reconciliation). Only tokens this process holds are used, so the budget holds
    across replicas as the batch quota does (docs/design.md#scaling)."""

    def __init__(self, tokens: Tokens, requests_per_minute: float) -> None:
        self._tokens = tokens
        self._rpm = requests_per_minute
        self._slots: dict[str, dict[Secret, tuple[float, Slots]]] = {}
        """Per account and token: the share of its rate this process holds, and its status slots
        (only of the tokens the account holds now: a day renews each of them 24 times)."""
        self._turns: dict[str, asyncio.Lock] = {}
        """Per account: the requests waiting for a slot, in line. Only the first one watches the
        slots; the others wait their turn without a timer (docs/design.md#reconciliation)."""

    def __repr__(self) -> str:
        return f"StatusBudget(requests_per_minute={self._rpm})"

    async def take(self, account: str) -> str:
        """A token to ask about a batch on, once its status budget has a slot, in the order asked;
        ``AuthError`` if the account has no token."""
        turn = self._turns.get(account)
        if turn is None:
            turn = self._turns[account] = asyncio.Lock()
        while True:
            if not self._tokens.pool(account).usable():
                # Outside the line: every request waiting for a token hears at once that there is
                # none, as without one.
                await self._tokens.get(account)
                continue
            async with turn:
                token = await self._next_slot(account)
            if token is not None:
                return token

    async def _next_slot(self, account: str) -> str | None:
        """Wait for the first slot of any token the account holds and take it; None once it holds
        none. The first in line only: each slot wakes one request, however many are waiting."""
        loop = asyncio.get_running_loop()
        slots = self._slots.setdefault(account, {})
        while held := self._tokens.pool(account).usable():
            now = loop.time()
            if len(slots) > len(held):  # tokens renewed or let go: their slots go too
                live = {h.token for h in held}
                for gone in [token for token in slots if token not in live]:
                    del slots[gone]
            # With token sharing, status requests go on this replica's own slots' tokens; one that
            # holds none takes a tenth of each token's budget (docs/design.md#reconciliation).
            own = [(h.token, h.share) for h in held if h.share > 0]
            shares = own or [(h.token, _ELSEWHERE_SHARE) for h in held]
            waits = [(self._slots_of(slots, t, share).wait_s(now), t) for t, share in shares]
            wait_s, token = min(waits, key=lambda w: w[0])
            if wait_s <= 0:
                slots[token][1].take(now)
                return token.reveal()
            await asyncio.sleep(wait_s)
        return None

    def _slots_of(
        self, slots: dict[Secret, tuple[float, Slots]], token: Secret, share: float
    ) -> Slots:
        """A token's status slots (of ``slots``, its account's) at ``share`` of the budget (a
        static token shared by more slots than this process holds: docs/design.md#scaling); its
        history outlives a new share."""
        known = slots.get(token)
        if known is None or known[0] != share:
            sent = known[1].sent if known is not None else None
            known = slots[token] = (share, Slots.per_minute(self._rpm * share, sent))
        return known[1]
