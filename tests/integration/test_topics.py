"""``stream.topics`` on the real broker: what exists is looked at, not created again; what is
missing is created; a topic that must grow grows (docs/operations.md#acls). The same on a broker
that grants no CREATE: tests/faults/test_acls.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from stream.errors import TopicError
from stream.topics import TopicSpec, ensure_topics, partitions
from tests.support.kafka import Broker, delete_topics, unique

pytestmark = pytest.mark.integration


def test_a_missing_topic_is_created_and_an_existing_one_left_alone(
    kafka: Broker, admin: AdminClient, topic_factory: Callable[..., str]
) -> None:
    existing = topic_factory(partitions=3)
    missing = unique("topic")
    config = {"bootstrap.servers": kafka.bootstrap_servers}
    try:
        found = ensure_topics(
            config,
            [
                TopicSpec(name=existing, partitions=1, config={"cleanup.policy": "compact"}),
                TopicSpec(name=missing, partitions=2, config={"cleanup.policy": "compact"}),
            ],
        )
        assert found == {existing: 3, missing: 2}
        described = admin.describe_configs([ConfigResource("topic", existing)])
        [settings] = [future.result(30) for future in described.values()]
        assert settings["cleanup.policy"].value == "delete"  # an existing topic is not changed
        assert ensure_topics(config, [TopicSpec(name=missing, partitions=2)]) == {missing: 2}
    finally:
        delete_topics(kafka.bootstrap_servers, [missing])


def test_a_topic_that_must_grow_grows_and_one_with_more_stays(
    kafka: Broker, topic_factory: Callable[..., str]
) -> None:
    small, large = topic_factory(partitions=2), topic_factory(partitions=6)
    config = {"bootstrap.servers": kafka.bootstrap_servers}

    found = ensure_topics(
        config,
        [
            TopicSpec(name=small, partitions=4, grow=True),
            TopicSpec(name=large, partitions=4, grow=True),
        ],
    )

    assert found == {small: 4, large: 6}
    assert partitions(config, [small, large]) == {small: 4, large: 6}


def test_describing_creates_nothing_and_an_unreachable_cluster_is_an_error(kafka: Broker) -> None:
    missing = unique("topic")
    config = {"bootstrap.servers": kafka.bootstrap_servers}
    assert partitions(config, [missing]) == {}
    assert partitions(config, [missing]) == {}
    with pytest.raises(TopicError, match="cannot be described"):
        partitions({"bootstrap.servers": "127.0.0.1:1", "log_level": 0}, [missing], timeout_s=1)
