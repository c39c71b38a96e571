"""The Grafana dashboard: off by default; on, a ConfigMap the sidecar finds, querying only metrics
the service exposes."""

from __future__ import annotations

import json

import pytest

from stream.metrics import Metrics, State
from tests.support.helm import DASHBOARD, VALUES_DIR, Helm, dashboard_queries, metrics_named
from tests.support.service import metric_names

pytestmark = pytest.mark.chart


def exposed_metric_names() -> set[str]:
    """Every sample name the service's /metrics can show, read from a real registry."""
    metrics = Metrics()
    metrics.watch(
        State(
            buffered=lambda: 0,
            open_records=lambda: 0,
            paused=lambda: 0,
            assigned=lambda: 0,
            lag=lambda: {("t", 0): 0},
            last_commit=lambda: 0.0,
            token_refreshes=lambda: 0,
            rates=lambda: {"a": 1.0},
        )
    )
    return metric_names(metrics.exposition().decode())


def test_off_by_default(helm: Helm) -> None:
    manifests = helm.render([VALUES_DIR / "minimal.yaml"])
    assert not [m for m in manifests if m["metadata"]["name"].endswith("-dashboard")]


def test_on_it_is_a_config_map_for_the_sidecar(helm: Helm) -> None:
    manifests = helm.render([VALUES_DIR / "grafana-dashboard.yaml"])
    [board] = [m for m in manifests if m["metadata"]["name"].endswith("-dashboard")]
    assert board["kind"] == "ConfigMap"
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert board["metadata"]["annotations"]["grafana_folder"] == "Kafka"
    assert json.loads(board["data"]["dcr-stream.json"]) == json.loads(DASHBOARD.read_text())


def test_every_query_uses_metrics_the_service_exposes() -> None:
    queried = metrics_named(dashboard_queries())
    assert queried
    assert queried <= exposed_metric_names()
