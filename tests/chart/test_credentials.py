"""Every way the chart gives the service its API credentials, and a private CA for the API.

Each ``auth.mode`` (``token``, the token as a file, ``keyPair``, ``credentialsFile``) with no CA
bundle, one from a Secret and one from a ConfigMap renders valid Kubernetes objects and exactly
one way to authenticate for the service's own loader; each file the service reads is on a
read-only directory mount, never a ``subPath``, so the kubelet's updates reach it. Then the
service itself runs on a rendered credentials-file pod (the volumes written here as the kubelet
writes them) against the broker and an HTTPS sandbox whose certificate only the mounted CA bundle
vouches for: it mints for the account with a key pair, sends on the other's static token, and
takes a rotated token from an updated Secret without a restart.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import yaml

from stream.config import load
from stream.credentials import Credentials, parse_credentials
from stream.secrets import Secret
from tests.support.events import ACCOUNTS, Ledger, events
from tests.support.helm import (
    RELEASE,
    VALUES_DIR,
    Helm,
    Manifest,
    container,
    kinds,
    kubernetes_problems,
    local_env,
    only,
    pod_spec,
    project,
    service_env,
)
from tests.support.kafka import Broker, wait_committed
from tests.support.sandbox import SandboxThread
from tests.support.service import RUN_TIMEOUT_S, Service, get_text
from tests.support.waiting import wait_until

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
EVENTS = 200


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


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key (PEM files)."""
    cert, key = tmp_path / "api.pem", tmp_path / "api.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.integration
def test_the_service_runs_on_a_rendered_credentials_file_and_takes_its_updates(
    helm: Helm,
    kafka: Broker,
    tmp_path: Path,
    self_signed: tuple[Path, Path],
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
    sandbox_thread: Callable[..., SandboxThread],
) -> None:
    values = yaml.safe_load(CREDENTIALS_FILE.read_text())
    key_pair = values["auth"]["credentials"][KEY_PAIR_ACCOUNT]
    (token,) = values["auth"]["credentials"][TOKENS_ACCOUNT]["tokens"]
    rotated = "test-token-rotated-not-a-secret"
    cert, key = self_signed
    sandbox = sandbox_thread(
        static_token=None,
        static_tokens=(token, rotated),
        token_rate_limit=60,  # the API's, the chart's default; and the sandbox counts token use
        key_id=key_pair["key_id"],
        api_key=key_pair["api_key"],
        tls_cert=str(cert),
        tls_key=str(key),
    )
    assert sandbox.url.startswith("https://")
    topic, group = topic_factory(partitions=2), group_factory()
    manifests = helm.render(
        [CREDENTIALS_FILE],
        sets=[
            f"api.baseUrl={sandbox.url}",
            f"json:kafka.bootstrapServers={json.dumps(kafka.bootstrap_servers)}",
            f"json:kafka.topics={json.dumps([topic])}",
            f"kafka.groupId={group}",
        ],
    )
    ca = {values["api"]["caBundle"]["configMapName"]: {"ca.crt": cert.read_bytes()}}
    # Port 0: the tests share this host, and a chart's port is 1024 or above.
    env = local_env(manifests, tmp_path / "pod", ca) | {"DCR_HTTP_PORT": "0"}
    credentials = Path(env["DCR_API_CREDENTIALS_FILE"])
    ledger = Ledger(kafka.bootstrap_servers, topic, 2)

    def delivered() -> bool:
        return set(sandbox.accepted_receivers()) == ledger.valid

    def token_use() -> dict[str, dict[str, object]]:
        stats = sandbox.run(sandbox.sandbox.stats).accounts
        return {account: dict(stats[account].token_use) for account in ACCOUNTS}

    settings = {name.removeprefix("DCR_").lower(): value for name, value in env.items()}
    with Service(tmp_path / "service.log", **settings) as service:
        ledger.produce(events(EVENTS))
        wait_until(
            lambda: service.alive() and delivered(), timeout_s=RUN_TIMEOUT_S, what="delivered"
        )
        ready = json.loads(get_text(service.http_port(), "/readyz"))
        assert ready["status"] == "ready", ready
        stats = sandbox.run(sandbox.sandbox.stats).accounts
        assert stats[KEY_PAIR_ACCOUNT].tokens.get("200", 0) >= 1, "no token minted"
        assert stats[TOKENS_ACCOUNT].tokens == {}, "minted for the account with a static token"
        before = token_use()
        assert before[KEY_PAIR_ACCOUNT], "no request on a minted token"
        assert all(label.startswith("minted-") for label in before[KEY_PAIR_ACCOUNT])
        assert set(before[TOKENS_ACCOUNT]) == {"static-0"}

        # The Secret is updated: the kubelet swaps the volume's files, the service reads them again.
        updated = json.loads(credentials.read_text())
        updated[TOKENS_ACCOUNT] = {"tokens": [rotated]}
        project(credentials.parent, {credentials.name: json.dumps(updated).encode()})
        ledger.produce(events(EVENTS, start=EVENTS))
        wait_until(
            lambda: service.alive() and delivered(), timeout_s=RUN_TIMEOUT_S, what="delivered"
        )
        after = token_use()[TOKENS_ACCOUNT]
        assert after["static-0"] == before[TOKENS_ACCOUNT]["static-0"], "the old token used"
        assert "static-1" in after, "the rotated token not used"
        wait_committed(kafka.bootstrap_servers, group, topic, 2, timeout_s=RUN_TIMEOUT_S)
