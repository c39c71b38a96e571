"""The alerting rules (docs/operations.md#alerts): off by default; on, a PrometheusRule that
Prometheus's own promtool accepts and whose every alert fires when it should and stays silent on a
healthy run (tests/chart/alerts/rules.test.yaml), valid against the Prometheus Operator's CRD,
linked to a runbook section, and reading only metrics the service exposes.

promtool comes from ``scripts/promtool.sh`` (Debian's package, cached); the CRD from the Prometheus
Operator's Go module, through the Go module proxy (cached by Go). Neither is committed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.chart.test_dashboard import exposed_metric_names
from tests.support.helm import (
    ALERTS_VALUES,
    REPO,
    VALUES_DIR,
    Helm,
    alert_rules,
    kinds,
    metrics_named,
    only,
)

pytestmark = pytest.mark.chart

UNIT_TESTS = REPO / "tests" / "chart" / "alerts" / "rules.test.yaml"
RUNBOOK = REPO / "docs" / "operations.md"
OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
"""The Prometheus Operator release whose PrometheusRule CRD the rendered rule is checked against."""
CRD = "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"


@pytest.fixture(scope="session")
def promtool() -> Path:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "promtool.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/promtool.sh could not provide promtool:\n{proc.stderr}", pytrace=False
        )
    return Path(proc.stdout.strip())


@pytest.fixture
def rules_dir(helm: Helm, tmp_path: Path) -> Path:
    """The rendered rule groups as promtool reads them, with the unit tests beside them."""
    rule = only(helm.render([ALERTS_VALUES]), "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    return tmp_path


def _promtool(promtool: Path, *args: str, cwd: Path) -> str:
    proc = subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_off_by_default(helm: Helm) -> None:
    assert "PrometheusRule" not in kinds(helm.render([VALUES_DIR / "minimal.yaml"]))


def test_promtool_checks_the_rules(promtool: Path, rules_dir: Path) -> None:
    out = _promtool(promtool, "check", "rules", "rules.yaml", cwd=rules_dir)
    assert "SUCCESS: 14 rules found" in out


def test_promtool_unit_tests_pass(promtool: Path, rules_dir: Path) -> None:
    _promtool(promtool, "test", "rules", UNIT_TESTS.name, cwd=rules_dir)


def test_every_alert_has_a_firing_and_a_silent_case(helm: Helm) -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules(helm)}
    assert firing == silent == alerts


def test_every_alert_has_a_severity_a_summary_and_its_runbook_section(helm: Helm) -> None:
    headings = re.findall(r"^### (Dcr\w+)$", RUNBOOK.read_text(), re.M)
    values = yaml.safe_load(ALERTS_VALUES.read_text())["alerts"]
    for rule in alert_rules(helm):
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["labels"]["team"] == values["extraLabels"]["team"], name
        assert rule["annotations"]["summary"], name
        # GitHub's anchor of a heading "### DcrPartitionStuck" is "#dcrpartitionstuck".
        assert rule["annotations"]["runbook_url"] == f"{values['runbookUrl']}#{name.lower()}"
        assert name in headings, f"docs/operations.md has no runbook section for {name}"
    assert sorted(headings) == sorted(rule["alert"] for rule in alert_rules(helm))


def test_every_rule_reads_metrics_the_service_exposes(helm: Helm) -> None:
    named = metrics_named([rule["expr"] for rule in alert_rules(helm)])
    assert len(named) >= 14
    assert named <= exposed_metric_names()


@pytest.fixture(scope="session")
def prometheus_rule_schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the operator's PrometheusRule CRD (``v1``)."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    proc = subprocess.run(
        [go, "mod", "download", "-json", OPERATOR],
        capture_output=True,
        text=True,
        cwd=tmp_path_factory.mktemp("go"),  # outside any module
        env={**os.environ, "GOFLAGS": "-mod=mod"},
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"go mod download {OPERATOR} failed:\n{proc.stderr}", pytrace=False)
    crd = yaml.safe_load((Path(json.loads(proc.stdout)["Dir"]) / CRD).read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def test_the_rule_validates_against_the_operators_crd(
    helm: Helm, prometheus_rule_schema: dict[str, Any]
) -> None:
    rule = only(helm.render([ALERTS_VALUES]), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    # Not ``jsonschema.validate``: that checks the schema first, and one of the CRD's patterns is
    # Go's regular expression syntax ("^(?i)..."), which Python's ``re`` refuses. The rule does not
    # use that field, so the validator never compiles it.
    errors = [
        e.message for e in jsonschema.Draft7Validator(prometheus_rule_schema).iter_errors(rule)
    ]
    assert not errors
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
