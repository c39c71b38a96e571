"""The KRaft cluster id never reads as an option to Kafka's storage tool: an id that started with
``-`` (one in 64) once made ``kafka.tools.StorageTool format`` refuse it and a fresh demo fail."""

from __future__ import annotations

import os
import uuid
from base64 import urlsafe_b64encode

import pytest
from confluent_kafka.admin import AdminClient

from stream import devkafka


def kafka_id(raw: bytes) -> str:
    """A UUID's 16 bytes as Kafka writes them: URL-safe base64 without padding."""
    return urlsafe_b64encode(raw).decode().rstrip("=")


def dashed_id() -> str:
    """A valid cluster id that starts with ``-``: 0xf8 is 111110.., 62 in base64, the ``-``."""
    cluster_id = kafka_id(b"\xf8" + os.urandom(15))
    assert cluster_id.startswith("-")
    return cluster_id


def test_a_generated_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))
    plain = uuid.UUID("6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11")
    drawn = iter([dashed, plain])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(drawn))
    assert devkafka._cluster_id() == kafka_id(plain.bytes)


@pytest.mark.integration
def test_storage_formatted_with_a_dashed_id_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real storage tool formats a directory with such an id, and the broker runs on it."""
    cluster_id = dashed_id()
    monkeypatch.setattr(devkafka, "_cluster_id", lambda: cluster_id)
    with devkafka.LocalKafka() as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers, "log_level": 0})
        assert admin.describe_cluster().result(30).cluster_id == cluster_id
