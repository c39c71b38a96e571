"""Every way the chart gives the service its API credentials, and a private CA for the API.

Each ``auth.mode`` (``token``, the token as a file, ``keyPair``, ``credentialsFile``) with no CA
bundle, one from a Secret and one from a ConfigMap renders valid Kubernetes objects and exactly
one way to authenticate for the service's own loader; each file the service reads is on a
read-only directory mount, never a ``subPath``, so the kubelet's updates reach it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from stream.config import load
from stream.credentials import Credentials, parse_credentials
from stream.secrets import Secret
from tests.support.events import ACCOUNTS
from tests.support.helm import (
    RELEASE,
    VALUES_DIR,
    Helm,
    Manifest,
    container,
    kinds,
    kubernetes_problems,
    only,
    pod_spec,
    service_env,
)

pytestmark = pytest.mark.chart

MINIMAL = VALUES_DIR / "minimal.yaml"
CREDENTIALS_FILE = VALUES_DIR / "credentials-file.yaml"
EXISTING_SECRET = VALUES_DIR / "credentials-file-existing-secret.yaml"
CHART_SECRET = f"{RELEASE}-dcr-stream"
KEY_PAIR_ACCOUNT, TOKENS_ACCOUNT = ACCOUNTS
"""The accounts of ``CREDENTIALS_FILE``: one mints its tokens, the other has a static one."""

MODES = {
    "token": [],
    "token-file": ["auth.mountTokenAsFile=true"],
    "key-pair": ["auth.token=", "auth.mode=keyPair", "auth.keyId=k", "auth.key=s"],
    "credentials-file": [
        "auth.token=",
        "auth.mode=credentialsFile",
        "json:auth.credentials=" + json.dumps({KEY_PAIR_ACCOUNT: {"key_id": "k", "api_key": "s"}}),
    ],
}
"""Each way to authenticate, over ``MINIMAL``."""
AUTHENTICATES_WITH = {
    "token": {"DCR_API_TOKEN"},
    "token-file": {"DCR_API_TOKEN_FILE"},
    "key-pair": {"DCR_API_KEY_ID", "DCR_API_KEY"},
    "credentials-file": {"DCR_API_CREDENTIALS_FILE"},
}
AUTH_VARIABLES = set().union(*AUTHENTICATES_WITH.values())
CA_SOURCES = {
    "no-ca": [],
    "ca-secret": ["api.caBundle.secretName=corp-ca"],
    "ca-config-map": ["api.caBundle.configMapName=corp-ca", "api.caBundle.key=ca.pem"],
}
FILES = {
    "token-file": {"DCR_API_TOKEN_FILE": ("secret", CHART_SECRET, "DCR_API_TOKEN")},
    "credentials-file": {"DCR_API_CREDENTIALS_FILE": ("secret", CHART_SECRET, "credentials.json")},
    "ca-secret": {"DCR_API_CA_BUNDLE": ("secret", "corp-ca", "ca.crt")},
    "ca-config-map": {"DCR_API_CA_BUNDLE": ("configMap", "corp-ca", "ca.pem")},
}
"""Per mode and CA source, the variables that name a file, and where the file comes from: the
volume's kind, the object's name and the key in it."""


def _render(helm: Helm, mode: str, ca: str, kube_version: str = "") -> list[Manifest]:
    return helm.render([MINIMAL], sets=MODES[mode] + CA_SOURCES[ca], kube_version=kube_version)


def _mounted(manifests: Sequence[Manifest], path: str) -> tuple[Manifest, Manifest]:
    """The container's mount of the directory that holds ``path``, and its volume."""
    (mount,) = [
        m for m in container(manifests)["volumeMounts"] if m["mountPath"] == str(Path(path).parent)
    ]
    volume = next(v for v in pod_spec(manifests)["volumes"] if v["name"] == mount["name"])
    return mount, volume


@pytest.mark.parametrize("kube_version", ["1.30.0", "1.33.0"])
@pytest.mark.parametrize("ca", CA_SOURCES)
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_renders_valid_kubernetes(
    helm: Helm, mode: str, ca: str, kube_version: str
) -> None:
    assert kubernetes_problems(_render(helm, mode, ca, kube_version), kube_version) == []


@pytest.mark.parametrize("ca", CA_SOURCES)
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_gives_the_service_one_way_to_authenticate(
    helm: Helm, mode: str, ca: str
) -> None:
    env = service_env(_render(helm, mode, ca))
    assert set(env) & AUTH_VARIABLES == AUTHENTICATES_WITH[mode]
    loaded = load(env)
    assert loaded.api_ca_bundle == env.get("DCR_API_CA_BUNDLE")
    assert (loaded.api_ca_bundle is None) == (ca == "no-ca")


@pytest.mark.parametrize("ca", CA_SOURCES)
@pytest.mark.parametrize("mode", MODES)
def test_every_file_is_a_read_only_directory_mount(helm: Helm, mode: str, ca: str) -> None:
    manifests = _render(helm, mode, ca)
    env = service_env(manifests)
    files = FILES.get(mode, {}) | FILES.get(ca, {})
    mounts = container(manifests)["volumeMounts"]
    assert len(mounts) == 1 + len(files), "a mount for /tmp and one for each file"
    assert all("subPath" not in m for m in mounts)
    for variable, (kind, name, key) in files.items():
        mount, volume = _mounted(manifests, env[variable])
        assert mount["readOnly"] is True
        source = volume[kind]
        assert source.get("secretName", source.get("name")) == name
        assert source["items"] == [{"key": key, "path": Path(env[variable]).name}]


def test_the_credentials_file_is_the_values_as_json(helm: Helm) -> None:
    manifests = helm.render([CREDENTIALS_FILE])
    secret = only(manifests, "Secret")["data"]
    assert secret.keys() == {"credentials.json"}, "no token or key pair beside the file"
    parsed = parse_credentials(base64.b64decode(secret["credentials.json"]).decode())
    assert parsed == {
        KEY_PAIR_ACCOUNT: Credentials(
            key_id="test-key-id", api_key=Secret("test-key-not-a-secret")
        ),
        TOKENS_ACCOUNT: Credentials(tokens=(Secret("test-token-not-a-secret"),)),
    }


def test_the_credentials_file_can_come_from_an_existing_secret(helm: Helm) -> None:
    manifests = helm.render([EXISTING_SECRET])
    assert "Secret" not in kinds(manifests)
    env = service_env(manifests)
    _, volume = _mounted(manifests, env["DCR_API_CREDENTIALS_FILE"])
    assert volume["secret"]["secretName"] == "dcr-credentials"
    assert volume["secret"]["items"][0]["key"] == "credentials.toml"
    _, volume = _mounted(manifests, env["DCR_API_CA_BUNDLE"])
    assert volume["secret"]["secretName"] == "corp-ca"
    assert volume["secret"]["items"][0]["key"] == "ca.pem"


def test_changed_credentials_in_the_charts_secret_roll_the_pods(helm: Helm) -> None:
    def checksum(*sets: str) -> str:
        deployment = only(helm.render([CREDENTIALS_FILE], sets=sets), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    rotated = f"auth.credentials.{TOKENS_ACCOUNT}.tokens={{test-token-rotated}}"
    assert checksum(rotated) != checksum()
