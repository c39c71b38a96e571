"""Token sharing against the real broker (``stream.sharing``): two replicas' readers decide every
claim alike, and no bucket of a token is granted twice."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter

import pytest

from stream.sharing import Sharing
from stream.topics import TopicSpec
from tests.support.kafka import Broker, delete_topics, unique
from tests.support.waiting import wait_until_async

pytestmark = pytest.mark.integration

ROUNDS = 60


def _count(counter: Counter[tuple[str, int]], account: str, token: int, next_s: float) -> None:
    counter[(account, token)] += 1


async def test_two_replicas_claiming_one_token_get_each_bucket_once(kafka: Broker) -> None:
    loop = asyncio.get_running_loop()
    config = {"bootstrap.servers": kafka.bootstrap_servers}
    name = unique("sharing")
    slots = TopicSpec(name=name, partitions=2, config={"cleanup.policy": "compact"}, grow=True)
    replicas = [
        Sharing(
            config, config, topic=f"{name}.claims", slots=slots, requests_per_minute=600, loop=loop
        )
        for _ in range(2)
    ]
    seen: list[Counter[tuple[str, int]]] = [Counter(), Counter()]
    for replica, counter in zip(replicas, seen, strict=True):
        replica.listen(
            want=lambda account: None,
            grant=functools.partial(_count, counter),
            record=lambda account: None,
        )
        await replica.start()
    granted_at: list[float] = []

    async def claim_on(replica: Sharing) -> None:
        for _ in range(ROUNDS):
            wait_s = await replica.claim("a", 0)
            if wait_s == 0:
                granted_at.append(loop.time())
            await asyncio.sleep(wait_s)

    try:
        await asyncio.gather(*(claim_on(r) for r in replicas))
        granted = sum(r.granted for r in replicas)
        await wait_until_async(
            lambda: seen[0][("a", 0)] == seen[1][("a", 0)] >= granted,
            timeout_s=10,
            what="both readers to have decided every claim",
        )
    finally:
        for replica in replicas:
            await replica.close()
        delete_topics(kafka.bootstrap_servers, [f"{name}.claims", name])
    assert all(r.granted > 0 for r in replicas), [r.granted for r in replicas]
    assert seen[0] == seen[1]
    # Any 31 uses of the token lie in 31 buckets (0.102 s each at 600 a minute): the last claim
    # came 30 buckets at least after the first one's bucket began, and that one was used within
    # ``send_by_s`` of it. Two grants in one bucket would break this.
    granted_at.sort()
    assert len(granted_at) > 31
    spans = [b - a for a, b in zip(granted_at, granted_at[30:], strict=False)]
    assert min(spans) >= 30 * replicas[0].bucket_s - replicas[0].send_by_s, spans
