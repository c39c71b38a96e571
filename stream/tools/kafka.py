"""What ``produce`` and ``replay`` share to reach Kafka: the connection properties, read from the
service's own settings, and a metadata look-up that turns an unreachable cluster into one line."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from stream.config import client_properties
from stream.errors import DcrStreamError
from stream.settings import setting

__all__ = ["CONNECT_TIMEOUT_S", "add_bootstrap_servers", "kafka_config", "topic_partitions"]

CONNECT_TIMEOUT_S = 10.0
"""How long the first metadata request may take before the cluster counts as unreachable."""


def kafka_config(env: Mapping[str, str], bootstrap_servers: str | None = None) -> dict[str, Any]:
    """Connection properties for ``produce`` and ``replay``: ``bootstrap_servers``, else
    ``DCR_KAFKA_BOOTSTRAP_SERVERS`` (default ``localhost:9092``), plus the service's librdkafka
    pass-through (``DCR_KAFKA_CONFIG``, ``DCR_KAFKA_SECRET_CONFIG``), so TLS and SASL work as they
    do for ``run``. A bad value raises ``ConfigError`` naming the variable."""
    return client_properties(
        bootstrap_servers or setting(env, "kafka_bootstrap_servers"),
        setting(env, "kafka_config"),
        setting(env, "kafka_secret_config"),
    )


def topic_partitions(
    client: AdminClient | Consumer, config: Mapping[str, Any], topic: str
) -> list[int]:
    """The partitions of ``topic``, none if it does not exist; ``DcrStreamError`` in one line when
    the cluster does not answer within ``CONNECT_TIMEOUT_S``."""
    try:
        metadata = client.list_topics(timeout=CONNECT_TIMEOUT_S)
    except KafkaException as exc:
        error = exc.args[0]
        reason = error.str() if isinstance(error, KafkaError) else str(error)
        raise DcrStreamError(
            f"Kafka at {config['bootstrap.servers']} did not answer ({reason}); check "
            "--bootstrap-servers or DCR_KAFKA_BOOTSTRAP_SERVERS, and that the broker runs"
        ) from None
    found = metadata.topics.get(topic)
    return sorted(found.partitions) if found is not None and found.error is None else []


def add_bootstrap_servers(parser: argparse.ArgumentParser) -> None:
    """The ``--bootstrap-servers`` option of the tools that talk to Kafka (see ``kafka_config``)."""
    parser.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="Kafka (default: $DCR_KAFKA_BOOTSTRAP_SERVERS, else localhost:9092); "
        "$DCR_KAFKA_CONFIG and $DCR_KAFKA_SECRET_CONFIG apply as for run",
    )
