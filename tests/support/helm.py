"""The chart tests' ``helm``: a real binary, renders of ``helm/dcr-stream``, and readers of them.

``scripts/helm.sh`` builds helm from its Go module once and caches it outside the repo. If it cannot
provide the binary, every chart test errors: a missing helm fails the run, it never skips it.

``local_env`` plays the kubelet for a rendered pod on this host: the service's environment, with
the pod's Secret and ConfigMap volumes written where the service can read them (``project`` writes
and updates a volume as the kubelet does), so that a test starts the service as the chart sets it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "dcr-stream"
VALUES_DIR = REPO / "tests" / "chart" / "values"
VALUES = sorted(VALUES_DIR.glob("*.yaml"))
"""The good values files: each must lint, render and validate."""
BAD_VALUES = sorted((REPO / "tests" / "chart" / "bad-values").glob("*.yaml"))
"""Each breaks one rule of values.schema.json; its first line says ``# expect: <error text>``."""
RELEASE = "rel"
DASHBOARD = CHART / "dashboards" / "dcr-stream.json"
ALERTS_VALUES = VALUES_DIR / "alerts.yaml"
"""The alerting rules on (tests/chart/test_alerts.py)."""

Manifest = dict[str, Any]

CUSTOM_KINDS = {"PrometheusRule", "ScaledObject", "ServiceMonitor"}
"""Kinds from CRDs: the Kubernetes schemas do not know them (tests/chart/test_matrix.py)."""
POD_NAME = "dcr-stream-7d9f8c6b5-x2k4q"
"""The pod's name, as ``service_env`` gives it to the downward API's ``metadata.name``."""


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr."""


@dataclass(frozen=True)
class Helm:
    binary: Path
    env: dict[str, str]
    _renders: dict[tuple[str, ...], list[Manifest]] = field(default_factory=dict)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )

    def template_args(
        self, values: Sequence[Path] = (), sets: Sequence[str] = (), kube_version: str = ""
    ) -> tuple[str, ...]:
        """``sets`` go to ``--set``, except ``json:key=value``, which goes to ``--set-json``
        (``--set`` leaves ``2.5`` a string, which the schema rejects for a number)."""
        args = ["template", RELEASE, str(CHART), "--namespace", "dcr"]
        for path in values:
            args += ["--values", str(path)]
        for assignment in sets:
            if assignment.startswith("json:"):
                args += ["--set-json", assignment.removeprefix("json:")]
            else:
                args += ["--set", assignment]
        if kube_version:
            args += ["--kube-version", kube_version]
        return tuple(args)

    def render(
        self, values: Sequence[Path] = (), sets: Sequence[str] = (), kube_version: str = ""
    ) -> list[Manifest]:
        """The rendered objects; renders are cached, so tests must not mutate what they get."""
        args = self.template_args(values, sets, kube_version)
        if args not in self._renders:
            proc = self.run(*args)
            if proc.returncode != 0:
                raise HelmError(proc.stderr)
            self._renders[args] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
        return self._renders[args]

    def render_error(self, values: Sequence[Path] = (), sets: Sequence[str] = ()) -> str:
        """helm's stderr for a render that must fail."""
        proc = self.run(*self.template_args(values, sets))
        assert proc.returncode != 0, f"helm template succeeded:\n{proc.stdout[:2000]}"
        return proc.stderr


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "helm.sh")],
        capture_output=True,
        text=True,
        timeout=1800,  # a cold build compiles helm and its dependencies
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/helm.sh could not provide helm:\n{proc.stderr}", pytrace=False)
    home = tmp_path_factory.mktemp("helm-home")
    # helm's own config, cache and plugins stay out of the user's home: renders are hermetic.
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return Helm(binary=Path(proc.stdout.strip()), env=env)


def only(manifests: Sequence[Manifest], kind: str) -> Manifest:
    """The single object of ``kind``."""
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[m['kind'] for m in manifests]}"
    return found[0]


def kinds(manifests: Sequence[Manifest]) -> set[str]:
    return {m["kind"] for m in manifests}


def container(manifests: Sequence[Manifest]) -> Manifest:
    """The dcr-stream container of the Deployment."""
    containers = only(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["dcr-stream"]
    return dict(containers[0])


def pod_spec(manifests: Sequence[Manifest]) -> Manifest:
    return dict(only(manifests, "Deployment")["spec"]["template"]["spec"])


def kubernetes_problems(manifests: Sequence[Manifest], kube_version: str) -> list[str]:
    """What a strict check against the Kubernetes ``kube_version`` schemas finds wrong with each
    object (CRDs' kinds left out), as ``Kind at path: message``."""
    problems = []
    for manifest in manifests:
        if manifest["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            problems.append(f"{manifest['kind']} at {path}: {exc.message}")
    return problems


def config(manifests: Sequence[Manifest]) -> dict[str, str]:
    """The settings ConfigMap's ``DCR_*`` settings (not the dashboard's ConfigMap)."""
    settings = [
        m for m in manifests if m["kind"] == "ConfigMap" and "DCR_API_BASE_URL" in m["data"]
    ]
    assert len(settings) == 1, "expected one ConfigMap of settings"
    return dict(settings[0]["data"])


def service_env(manifests: Sequence[Manifest]) -> dict[str, str]:
    """The environment the service starts with: the ConfigMap, then the container's own variables.

    Values from the chart's Secret are decoded; a Secret the chart does not render (an existing
    one) gives a stand-in, or nothing when the reference is optional; the pod's name is
    ``POD_NAME``.
    """
    env = config(manifests)
    secrets = {m["metadata"]["name"]: m["data"] for m in manifests if m["kind"] == "Secret"}
    for var in container(manifests)["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        if "fieldRef" in var["valueFrom"]:
            assert var["valueFrom"]["fieldRef"] == {"fieldPath": "metadata.name"}
            env[var["name"]] = POD_NAME
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        data = secrets.get(ref["name"], {})
        if ref["key"] in data:
            env[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
        elif not ref.get("optional"):
            assert ref["name"] not in secrets, f"the chart's Secret lacks {ref['key']}"
            env[var["name"]] = "stand-in-from-an-existing-secret"
    return env


def project(directory: Path, files: Mapping[str, bytes]) -> None:
    """Write ``files`` into ``directory`` as the kubelet writes a Secret or ConfigMap volume, and
    as it updates one: into a new hidden directory, to which the ``..data`` symlink is then swapped
    in one rename (the old one goes); each file is a symlink through ``..data``. A reader sees the
    old files or the new ones, never a mix, and a changed file has a new inode."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "..data"
    old = data.resolve() if data.is_symlink() else None
    version = directory / f"..{time.time_ns()}"
    version.mkdir()
    for name, content in files.items():
        (version / name).write_bytes(content)
    staged = directory / "..data_tmp"
    staged.symlink_to(version.name)
    staged.replace(data)
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(old)


def local_env(
    manifests: Sequence[Manifest],
    root: Path,
    objects: Mapping[str, Mapping[str, bytes]] | None = None,
) -> dict[str, str]:
    """``service_env`` for the rendered pod run on this host: each Secret and ConfigMap volume of
    the container is written to ``root/<volume>`` by ``project``, from the Secret the chart rendered
    or from ``objects`` (name → key → content: the Secrets and ConfigMaps the chart only names),
    and each path into a volume becomes the path of its file here."""
    volumes = {volume["name"]: volume for volume in pod_spec(manifests)["volumes"]}
    rendered = {
        m["metadata"]["name"]: {k: base64.b64decode(v) for k, v in m["data"].items()}
        for m in manifests
        if m["kind"] == "Secret"
    }
    sources = {**(objects or {}), **rendered}
    env = service_env(manifests)
    for mount in container(manifests)["volumeMounts"]:
        volume = volumes[mount["name"]]
        source = volume.get("secret") or volume.get("configMap")
        if source is None:
            continue  # an emptyDir: the service makes its own files there
        data = sources[source.get("secretName") or source["name"]]
        directory = root / mount["name"]
        project(directory, {item["path"]: data[item["key"]] for item in source["items"]})
        prefix = mount["mountPath"] + "/"
        for name, value in env.items():
            if value.startswith(prefix):
                env[name] = str(directory / value.removeprefix(prefix))
    return env


def alert_rules(helm: Helm) -> list[dict[str, Any]]:
    """The rules of the rendered ``PrometheusRule`` (``ALERTS_VALUES``)."""
    rule = only(helm.render([ALERTS_VALUES]), "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard_queries() -> list[str]:
    """Every query of the Grafana dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def metrics_named(expressions: Sequence[str]) -> set[str]:
    """The service's metric names (``dcr_*``) that PromQL ``expressions`` read."""
    return {name for expr in expressions for name in re.findall(r"\b(dcr_[a-z_]+)", expr)}
