"""Which token slots this process holds, and what each slot remembers (docs/design.md#scaling).

An account's token pool is cut into *slots* (``DCR_TOKEN_POOL_SIZE``, default 10). A slot is held
by one process at a time: only its holder mints its token and sends on it, so no token is used by
two replicas and its 60 requests a minute are never exceeded, however many replicas run. What a slot
remembers (its last mints, its token, sealed) outlives the process that wrote it, so a restarted or
new holder reuses a live token instead of minting.

``LocalLeases`` holds every slot and remembers in memory: one process, nothing shared (tests, and
the tools). ``KafkaLeases`` (``stream.leases_kafka``) shares the slots between replicas through a
compacted topic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["Leases", "LocalLeases"]


class Leases(Protocol):
    """The slots of every account's pool, as this process holds them."""

    @property
    def slots(self) -> int:
        """How many slots a pool has (the same for every account)."""
        ...

    def owned(self) -> frozenset[int]:
        """The slots this process holds now."""
        ...

    def watch(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop) whenever the held slots change."""
        ...

    def record(self, account: str, slot: int) -> bytes | None:
        """What ``slot`` of ``account``'s pool remembers (the last value stored), if anything."""
        ...

    async def store(self, account: str, slot: int, value: bytes) -> None:
        """Remember ``value`` for ``slot`` of ``account``'s pool; returns once it is kept."""
        ...


class LocalLeases:
    """Every slot held by this process, remembered in memory."""

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._records: dict[tuple[str, int], bytes] = {}

    def __repr__(self) -> str:
        return f"LocalLeases(slots={self._slots})"

    @property
    def slots(self) -> int:
        return self._slots

    def owned(self) -> frozenset[int]:
        return frozenset(range(self._slots))

    def watch(self, listener: Callable[[], None]) -> None:
        """The slots never change."""

    def record(self, account: str, slot: int) -> bytes | None:
        return self._records.get((account, slot))

    async def store(self, account: str, slot: int, value: bytes) -> None:
        self._records[(account, slot)] = value
