"""Every values file lints strictly, renders, and renders objects a real API server would accept.

Core objects are checked against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: an
unknown field fails) of the oldest and newest Kubernetes we support. CRDs (KEDA's ScaledObject,
the Prometheus operator's ServiceMonitor and PrometheusRule) have no schema there: test_settings.py
asserts on the first two, test_alerts.py checks the last against the operator's own CRD.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.helm import (
    BAD_VALUES,
    CHART,
    CUSTOM_KINDS,
    VALUES,
    Helm,
    kinds,
    kubernetes_problems,
)

pytestmark = pytest.mark.chart

KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")
CORE_KINDS = {
    "ConfigMap",
    "Deployment",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Secret",
    "Service",
    "ServiceAccount",
}


def _ids(paths: list[Path]) -> list[str]:
    return [path.stem for path in paths]


def test_the_matrix_is_not_empty() -> None:
    assert len(VALUES) >= 8
    assert len(BAD_VALUES) >= 5


@pytest.mark.parametrize("values", VALUES, ids=_ids(VALUES))
def test_lint_strict(helm: Helm, values: Path) -> None:
    proc = helm.run("lint", "--strict", str(CHART), "--values", str(values))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", VALUES, ids=_ids(VALUES))
def test_rendered_objects_are_valid_kubernetes(helm: Helm, values: Path, kube_version: str) -> None:
    manifests = helm.render([values], kube_version=kube_version)
    assert kinds(manifests) <= CORE_KINDS | CUSTOM_KINDS, "a new kind: add it to this test"
    assert kubernetes_problems(manifests, kube_version) == []


def test_the_matrix_renders_every_kind(helm: Helm) -> None:
    rendered = set().union(*(kinds(helm.render([values])) for values in VALUES))
    assert rendered == CORE_KINDS | CUSTOM_KINDS


@pytest.mark.parametrize("values", BAD_VALUES, ids=_ids(BAD_VALUES))
def test_bad_values_fail_the_schema(helm: Helm, values: Path) -> None:
    first_line = values.read_text().splitlines()[0]
    assert first_line.startswith("# expect: "), f"{values.name} must say what error it expects"
    expected = first_line.removeprefix("# expect: ")

    error = helm.render_error([values])
    assert "values don't meet the specifications of the schema" in error
    assert expected in error

    lint = helm.run("lint", "--strict", str(CHART), "--values", str(values))
    assert lint.returncode != 0
    assert expected in lint.stdout + lint.stderr
