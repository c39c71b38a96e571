"""The Grafana dashboard: off by default; on, a ConfigMap the sidecar finds, querying only metrics
the service exposes."""

from __future__ import annotations

import json
import re

import pytest

from stream.metrics import Metrics, State
from tests.support.helm import CHART, VALUES_DIR, Helm

pytestmark = pytest.mark.chart

DASHBOARD = CHART / "dashboards" / "dcr-stream.json"


def exposed_metric_names() -> set[str]:
    """Every sample name the service's /metrics can show (counters with _total, histograms with
    _bucket/_sum/_count), read from a real registry."""
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
    text = metrics.exposition().decode()
    names = set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
    samples = set()
    for name, kind in names:
        if kind == "counter":
            samples |= {name, f"{name}_total"}
        elif kind == "histogram":
            samples |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            samples.add(name)
    return samples


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
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(dcr_[a-z_]+)", target["expr"])
    }
    assert queried
    assert queried <= exposed_metric_names()
