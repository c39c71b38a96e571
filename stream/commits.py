"""The periodic commit of a consumer group's finished offsets (docs/design.md#at-least-once).

Both groups the service consumes in commit the same way: the input's (``DCR_KAFKA_GROUP_ID``,
every ``DCR_COMMIT_INTERVAL_MS``) and the reconciler's (``<DCR_KAFKA_GROUP_ID>.reconcile``, every
second). A ``Committer`` is one group's: each round it takes from the ``OffsetTracker`` the
positions that moved, has the consumer's thread commit them, and keeps what Kafka accepted; what
it refused is counted (``dcr_commit_failures_total{group}``) and tried again the next round, since
the positions are still there. The commits of a revoke are the consumer thread's own
(``stream.consumer``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from stream.metrics import Counts
from stream.offsets import OffsetTracker, TopicPartitionKey

__all__ = ["Commit", "Committer"]

_log = logging.getLogger("stream.commits")

Positions = dict[TopicPartitionKey, int]

Commit = Callable[[Positions], Awaitable[Positions]]
"""Commit on the consumer's thread; return the positions Kafka accepted
(``ConsumerThread.commit``)."""


def _nothing() -> None:
    pass


class Committer:
    """Commits ``tracker``'s finished prefixes through ``commit``: ``run`` every ``interval_s``,
    ``commit_once`` on the way out."""

    last_commit_s: float
    """Wall-clock time of the last commit Kafka accepted any of (0: never)."""

    def __init__(
        self,
        tracker: OffsetTracker,
        commit: Commit,
        *,
        group: str,
        interval_s: float,
        counts: Counts,
        each_round: Callable[[], None] = _nothing,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._tracker = tracker
        self._commit = commit
        self.group = group
        """The group's name in the metric and the logs: ``input`` or ``reconcile``."""
        self._interval_s = interval_s
        self._counts = counts
        self._each_round = each_round
        """Called before each periodic round (the input's stall warnings)."""
        self._wall = wall
        self.last_commit_s = 0.0
        # Served as 0 from the start, so that the first refusal shows as an increase.
        counts.commit_failures.setdefault(group, 0)

    def __repr__(self) -> str:
        return f"Committer(group={self.group!r}, interval_s={self._interval_s})"

    async def run(self) -> None:
        """Commit every ``interval_s`` until cancelled; a round that raises is logged, and the
        next one tries again."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                self._each_round()
                await self.commit_once()
            except Exception:
                _log.exception("periodic commit of the %s group failed", self.group)

    async def commit_once(self) -> None:
        """Commit every partition whose finished prefix moved since its last commit."""
        positions = self._tracker.to_commit()
        if not positions:
            return
        accepted = await self._commit(positions)
        self._tracker.committed(accepted)
        self._counts.commit_failures[self.group] += len(positions) - len(accepted)
        if accepted:
            self.last_commit_s = self._wall()
