"""The Dockerfile and the chart's Deployment agree: user, command, port and writable paths.

The image cannot be built in every environment the tests run in, so this reads the Dockerfile
instead: each instruction the pod relies on is checked against the rendered Deployment.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from stream.settings import SETTINGS
from tests.support.helm import REPO, VALUES, Helm, config, container, only

pytestmark = pytest.mark.chart


@dataclass(frozen=True)
class Instruction:
    keyword: str
    argument: str


def _stages(dockerfile: Path) -> list[list[Instruction]]:
    """The build stages, each a list of instructions (continuations joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[Instruction]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        keyword, _, argument = line.strip().partition(" ")
        instruction = Instruction(keyword.upper(), " ".join(argument.split()))
        if instruction.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


STAGES = _stages(REPO / "Dockerfile")
FINAL = STAGES[-1]


def _one(keyword: str) -> str:
    found = [i.argument for i in FINAL if i.keyword == keyword]
    assert len(found) == 1, f"the final stage needs exactly one {keyword}, has {found}"
    return found[0]


def _env() -> dict[str, str]:
    pairs = [p for i in FINAL if i.keyword == "ENV" for p in shlex.split(i.argument)]
    return dict(pair.split("=", 1) for pair in pairs)


def _user() -> tuple[int, int]:
    user, _, group = _one("USER").partition(":")
    # Numeric ids: the kubelet can check runAsNonRoot only against a numeric USER.
    assert user.isdigit()
    assert group.isdigit()
    return int(user), int(group)


def test_the_build_has_a_builder_and_a_slim_final_stage() -> None:
    assert len(STAGES) >= 2
    arg_default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert arg_default is not None
    assert arg_default.group(1) == "python:3.11-slim"
    assert FINAL[0].argument == "${PYTHON_IMAGE}"
    builder = " ".join(i.argument for i in STAGES[0])
    assert "--constraint constraints.txt" in builder
    final = " ".join(f"{i.keyword} {i.argument}" for i in FINAL)
    assert "COPY --from=builder /opt/dcr-stream /opt/dcr-stream" in final
    assert not re.search(r"apt-get install|gcc|build-essential|pip install", final)
    assert "pip uninstall" in final  # the base image's installers leave too


@pytest.mark.parametrize("values", VALUES, ids=[v.stem for v in VALUES])
def test_the_image_user_is_the_pods_non_root_user(helm: Helm, values: Path) -> None:
    uid, gid = _user()
    assert uid != 0
    assert gid != 0
    run = " ".join(i.argument for i in FINAL if i.keyword == "RUN")
    assert f"--uid {uid}" in run
    assert f"--gid {gid}" in run
    pod = only(helm.render([values]), "Deployment")["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (uid, gid, gid)
    assert security["runAsNonRoot"] is True


@pytest.mark.parametrize("values", VALUES, ids=[v.stem for v in VALUES])
def test_the_entrypoint_is_the_service_and_the_pod_keeps_it(helm: Helm, values: Path) -> None:
    assert json.loads(_one("ENTRYPOINT")) == ["dcr-stream", "run"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "dcr-stream" in scripts
    main = container(helm.render([values]))
    assert "command" not in main
    assert "args" not in main


@pytest.mark.parametrize("values", VALUES, ids=[v.stem for v in VALUES])
def test_tmp_is_the_only_writable_path(helm: Helm, values: Path) -> None:
    env = _env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HOME"] == "/tmp"
    main = container(helm.render([values]))
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    writable = [m["mountPath"] for m in main["volumeMounts"] if not m.get("readOnly")]
    assert writable == ["/tmp"]


@pytest.mark.parametrize("values", VALUES, ids=[v.stem for v in VALUES])
def test_the_exposed_port_is_the_http_port(helm: Helm, values: Path) -> None:
    exposed = int(_one("EXPOSE"))
    service_default = next(s.default for s in SETTINGS if s.env == "DCR_HTTP_PORT")
    assert exposed == int(str(service_default))
    manifests = helm.render([values])
    assert container(manifests)["ports"][0]["containerPort"] == exposed
    assert int(config(manifests)["DCR_HTTP_PORT"]) == exposed


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    ignore = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "an allow-list: nothing enters the context unless named"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {
        source.rstrip("/")
        for stage in STAGES
        for i in stage
        if i.keyword == "COPY" and not i.argument.startswith("--from")
        for source in i.argument.split()[:-1]
    }
    assert copied == allowed
    for source in copied:
        assert (REPO / source).exists(), source
