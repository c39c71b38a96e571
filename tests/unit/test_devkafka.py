"""The local broker's pure parts: ids, ports, cache location (no JVM started here)."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import pytest

from stream import devkafka


def test_cluster_id_is_a_uuid_in_22_url_safe_base64_characters() -> None:
    cluster_id = devkafka._cluster_id()
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_pinned_version_is_kafka_4() -> None:
    assert devkafka.KAFKA_VERSION.startswith("4.")


def test_cache_dir_honours_the_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DCR_KAFKA_CACHE", str(tmp_path))
    assert devkafka.cache_dir() == tmp_path / f"kafka-{devkafka.KAFKA_VERSION}"


def test_cached_jars_are_reused_without_maven(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DCR_KAFKA_CACHE", str(tmp_path))
    lib = devkafka.cache_dir() / "lib"
    lib.mkdir(parents=True)
    (lib / ".complete").write_text(devkafka._POM.read_text())
    monkeypatch.setattr(shutil, "which", lambda _: pytest.fail("mvn was looked up"))
    assert devkafka.fetch_jars() == lib


def test_server_properties_are_kraft_single_node(tmp_path: Path) -> None:
    text = devkafka._server_properties(tmp_path, 9092, 9093)
    assert "process.roles=broker,controller" in text
    assert "controller.quorum.bootstrap.servers=127.0.0.1:9093" in text
    assert "offsets.topic.replication.factor=1" in text
