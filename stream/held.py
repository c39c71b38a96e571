"""A token this process may send on, and an account's pool as metrics and readiness see it
(``stream.pool``)."""

from __future__ import annotations

from dataclasses import dataclass

from stream.minting import SlotRecord, encode
from stream.pacing import Pace
from stream.secrets import Secret

__all__ = ["Held", "PoolReport", "handed_over", "static_shares"]


@dataclass(eq=False, slots=True)
class Held:
    """A token this process may send on now."""

    index: int
    """Its slot (minted) or its place in the list (static): how metrics and logs name it."""
    token: Secret
    pace: Pace
    share: float = 1.0
    """The part of the token's rate this process holds (static tokens fewer than slots)."""
    minted_at: float | None = None
    """Wall time it was minted (minted tokens)."""
    elsewhere: bool = False
    """Its slot is held by another replica (token sharing): batches go on it, claimed
    (``stream.sharing``), urgent records do not."""


@dataclass(frozen=True, slots=True)
class PoolReport:
    """An account's pool in this process, for metrics and readiness."""

    live: int
    """Tokens it may send on."""
    slots: int
    """Slots it holds."""
    mints: int
    mints_refused: int
    """Mints the API refused (any answer but 2xx)."""
    mints_throttled: int
    """Of those, answered 429 (the account's budget was spent)."""
    mints_held_back: int
    """Mints a slot needed and the budget held back (each slot and next attempt counted once)."""
    requests: dict[int, int]
    """Requests sent by this process, per slot (or static token)."""
    forbidden: dict[str, int]
    """Endpoint → 403s from the labels or batch-status endpoint (the token was kept)."""
    waiting: str | None
    """Why it has no token to send on, when it has none."""
    auth_refused: int
    """1 while its records are dead-lettered as ``auth_refused`` (``TokenPool.given_up``)."""


def static_shares(
    count: int, slots: int, owned: frozenset[int]
) -> tuple[dict[int, float], dict[int, list[int]]]:
    """Static token → the part of its rate the ``owned`` slots hold, and those slots. Slot ``p``
    of ``P`` holds tokens ``p, p + P, …``; with fewer tokens than slots, token ``i`` is shared by
    the slots ``i, i + T, …``, each holding an equal part of its rate."""
    shares: dict[int, float] = {}
    owned_by: dict[int, list[int]] = {}
    for p in owned:
        if count >= slots:
            for i in range(p, count, slots):
                shares[i] = 1.0
                owned_by[i] = [p]
        else:
            i = p % count
            shares[i] = shares.get(i, 0.0) + 1.0 / len(range(i, slots, count))
            owned_by.setdefault(i, []).append(p)
    return shares, owned_by


def handed_over(held: Held, record: SlotRecord, wall_now: float, loop_now: float) -> bytes:
    """The record a minted token's slot is let go with: its history, so that the next holder goes
    on at the token's pace without waiting (``held.pace.slots`` is not None)."""
    assert held.pace.slots is not None
    sent = [wall_now - (loop_now - t) for t in held.pace.slots.sent]
    released = SlotRecord(
        mints=record.mints,
        token=record.token,
        minted_at=record.minted_at,
        released_at=wall_now,
        sent=sent,
    )
    return encode(released)
