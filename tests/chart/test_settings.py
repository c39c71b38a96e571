"""What the chart promises: the service's settings, the quota share, secrets, scaling, hardening.

The rendered ConfigMap and container environment are fed to the service's own configuration loader
(``stream.config.load``), so a setting the chart writes and the service cannot read fails here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from stream.config import load
from stream.settings import SETTINGS
from tests.support.helm import (
    CHART,
    POD_NAME,
    VALUES,
    VALUES_DIR,
    Helm,
    config,
    container,
    kinds,
    only,
    pod_spec,
    service_env,
)

pytestmark = pytest.mark.chart

MINIMAL = VALUES_DIR / "minimal.yaml"
HPA = VALUES_DIR / "hpa.yaml"
KEDA = VALUES_DIR / "keda.yaml"
KEY_PAIR = VALUES_DIR / "key-pair.yaml"
TOKEN_FILE = VALUES_DIR / "token-file.yaml"
EXISTING_SECRET = VALUES_DIR / "existing-secret.yaml"
KAFKA_SASL = VALUES_DIR / "kafka-sasl.yaml"
NETWORK = VALUES_DIR / "network-policy-servicemonitor.yaml"
SERVICE_SETTINGS = {setting.env for setting in SETTINGS}


def _ids(paths: Sequence[Path]) -> list[str]:
    return [path.stem for path in paths]


@pytest.mark.parametrize("values", VALUES, ids=_ids(VALUES))
def test_the_service_accepts_the_rendered_configuration(helm: Helm, values: Path) -> None:
    manifests = helm.render([values])
    env = service_env(manifests)
    assert set(env) <= SERVICE_SETTINGS, "a name the service does not read"
    loaded = load(env)
    assert loaded.token_pool_size == int(env["DCR_TOKEN_POOL_SIZE"])
    assert loaded.token_requests_per_minute == float(env["DCR_TOKEN_REQUESTS_PER_MINUTE"])
    assert loaded.rate_limit_rps == (
        float(env["DCR_RATE_LIMIT_RPS"]) if "DCR_RATE_LIMIT_RPS" in env else None
    )
    assert loaded.http_port == container(manifests)["ports"][0]["containerPort"]


def test_every_setting_the_chart_owns_reaches_the_config_map(helm: Helm) -> None:
    manifests = helm.render([KAFKA_SASL], sets=["kafka.highPriorityTopics={call-intents}"])
    assert set(config(manifests)) >= {
        "DCR_KAFKA_BOOTSTRAP_SERVERS",
        "DCR_KAFKA_TOPICS",
        "DCR_KAFKA_GROUP_ID",
        "DCR_KAFKA_HIGH_PRIORITY_TOPICS",
        "DCR_KAFKA_CONFIG",
        "DCR_DLQ_TOPIC",
        "DCR_RECEIPTS_TOPIC",
        "DCR_API_BASE_URL",
        "DCR_API_VERSION",
        "DCR_CLIENT_ACCOUNT_ID",
        "DCR_ALLOWED_LABEL_IDS",
        "DCR_RATE_LIMIT_RPS",
        "DCR_TOKEN_POOL_SIZE",
        "DCR_TOKEN_REQUESTS_PER_MINUTE",
        "DCR_BATCH_MAX_RECORDS",
        "DCR_BATCH_LINGER_MS",
        "DCR_REALTIME",
        "DCR_URGENT_WITHIN_S",
        "DCR_REALTIME_REQUESTS_PER_SECOND",
        "DCR_HTTP_PORT",
        "DCR_SHUTDOWN_TIMEOUT_S",
        "DCR_LOG_LEVEL",
        "DCR_MAX_BUFFERED_RECORDS",
        "DCR_RECONCILE",
        "DCR_STATUS_DELAY_S",
        "DCR_STATUS_REQUESTS_PER_MINUTE",
        "DCR_STATUS_GIVE_UP_S",
    }
    loaded = load(service_env(manifests))
    assert loaded.allowed_label_ids == {
        "5f0c2a55-2b8e-4a7e-9d3c-6a1f0e9b7c11": frozenset(
            {"0b7e3a8e-5d0a-4a39-8f8e-0d5b8f6f2c33", "7d1f4c2a-9e3b-4f6d-8a5c-2b0e1f3d4c55"}
        )
    }
    assert loaded.max_buffered_records == 2_000_000  # not 2e+06: integers stay integers
    assert loaded.api_timeout_s == 20  # from extraConfig


def test_kafka_secrets_stay_in_the_secret(helm: Helm) -> None:
    manifests = helm.render([KAFKA_SASL])
    plain = json.loads(config(manifests)["DCR_KAFKA_CONFIG"])
    assert plain == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "dcr-stream",
        "session.timeout.ms": "45000",
        "enable.ssl.certificate.verification": "true",
    }
    secret = only(manifests, "Secret")["data"]
    assert json.loads(base64.b64decode(secret["DCR_KAFKA_SECRET_CONFIG"])) == {
        "sasl.password": "test-password-not-a-secret"
    }
    assert "test-password-not-a-secret" not in json.dumps(config(manifests))
    loaded = load(service_env(manifests))
    assert loaded.consumer_config()["sasl.password"] == "test-password-not-a-secret"


@pytest.mark.parametrize(
    "sets",
    [
        ["replicaCount=1"],
        ["replicaCount=3"],
        ["replicaCount=10"],
        ["replicaCount=14"],
        ["autoscaling.hpa.enabled=true", "autoscaling.maxReplicas=6"],
        ["autoscaling.keda.enabled=true", "autoscaling.maxReplicas=10"],
    ],
)
def test_every_replica_count_renders_the_same_quota(helm: Helm, sets: list[str]) -> None:
    """The replicas share the token pool through Kafka: no per-replica arithmetic to render, and
    with token sharing (the default) more replicas than slots are fine."""
    quota = {k: v for k, v in config(helm.render([MINIMAL], sets=sets)).items() if "TOKEN" in k}
    assert quota == {
        "DCR_TOKEN_POOL_SIZE": "10",
        "DCR_TOKEN_REQUESTS_PER_MINUTE": "60",
        "DCR_TOKEN_SHARING": "on",
    }
    assert "DCR_RATE_LIMIT_RPS" not in config(helm.render([MINIMAL], sets=sets))


def test_the_quota_values_reach_the_service(helm: Helm) -> None:
    sets = [
        "quota.tokenPoolSize=4",
        "quota.tokenRequestsPerMinute=30",
        "json:quota.accountRequestsPerSecond=2.5",
        "quota.tokenTopic=dcr.slots",
        "quota.tokenSharing=false",
    ]
    settings = config(helm.render([MINIMAL], sets=sets))
    assert settings["DCR_TOKEN_SHARING"] == "off"
    assert settings["DCR_TOKEN_POOL_SIZE"] == "4"
    assert settings["DCR_TOKEN_REQUESTS_PER_MINUTE"] == "30"
    assert settings["DCR_RATE_LIMIT_RPS"] == "2.5"
    assert settings["DCR_TOKEN_TOPIC"] == "dcr.slots"


@pytest.mark.parametrize("values", VALUES, ids=_ids(VALUES))
def test_pods_run_hardened(helm: Helm, values: Path) -> None:
    manifests = helm.render([values])
    pod = pod_spec(manifests)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    security = container(manifests)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp
    mounts = container(manifests)["volumeMounts"]
    writable = [m["mountPath"] for m in mounts if not m.get("readOnly")]
    assert writable == ["/tmp"]
    assert all("subPath" not in m for m in mounts)
    resources = container(manifests)["resources"]
    assert resources["requests"].keys() >= {"cpu", "memory"}
    assert "memory" in resources["limits"]


@pytest.mark.parametrize("values", VALUES, ids=_ids(VALUES))
def test_the_grace_period_outlasts_the_shutdown_timeout(helm: Helm, values: Path) -> None:
    manifests = helm.render([values])
    grace = pod_spec(manifests)["terminationGracePeriodSeconds"]
    assert grace > float(config(manifests)["DCR_SHUTDOWN_TIMEOUT_S"])


def test_the_grace_period_follows_the_shutdown_timeout(helm: Helm) -> None:
    manifests = helm.render([MINIMAL], sets=["shutdownTimeoutSeconds=60"])
    assert config(manifests)["DCR_SHUTDOWN_TIMEOUT_S"] == "60"
    assert pod_spec(manifests)["terminationGracePeriodSeconds"] == 70


@pytest.mark.parametrize("values", VALUES, ids=_ids(VALUES))
def test_probes_and_ports_use_the_http_port(helm: Helm, values: Path) -> None:
    manifests = helm.render([values])
    main = container(manifests)
    assert main["ports"] == [
        {
            "name": "http",
            "containerPort": int(config(manifests)["DCR_HTTP_PORT"]),
            "protocol": "TCP",
        }
    ]
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert only(manifests, "Service")["spec"]["ports"][0]["targetPort"] == "http"
    assert "command" not in main
    assert "args" not in main  # the image's ENTRYPOINT, dcr-stream run, is the command


def test_a_changed_http_port_moves_everything(helm: Helm) -> None:
    manifests = helm.render([MINIMAL], sets=["httpPort=9100"])
    assert config(manifests)["DCR_HTTP_PORT"] == "9100"
    assert container(manifests)["ports"][0]["containerPort"] == 9100


@pytest.mark.parametrize("values", [HPA, KEDA], ids=["hpa", "keda"])
def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(helm: Helm, values: Path) -> None:
    assert "replicas" not in only(helm.render([values]), "Deployment")["spec"]


def test_fixed_deployments_set_replicas(helm: Helm) -> None:
    manifests = helm.render([KEY_PAIR])
    assert only(manifests, "Deployment")["spec"]["replicas"] == 3
    assert not kinds(manifests) & {"HorizontalPodAutoscaler", "ScaledObject"}


def test_rollouts_never_surge_above_the_token_slots(helm: Helm) -> None:
    strategy = only(helm.render([MINIMAL]), "Deployment")["spec"]["strategy"]
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }


def test_hpa_scales_the_deployment(helm: Helm) -> None:
    manifests = helm.render([HPA])
    hpa = only(manifests, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": only(manifests, "Deployment")["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert "ScaledObject" not in kinds(manifests)


def test_keda_watches_the_lag_of_the_configured_consumer_group(helm: Helm) -> None:
    manifests = helm.render([KEDA])
    settings = config(manifests)
    scaled = only(manifests, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"] == {
        "name": only(manifests, "Deployment")["metadata"]["name"]
    }
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 8)
    triggers = scaled["spec"]["triggers"]
    assert [t["metadata"]["topic"] for t in triggers] == settings["DCR_KAFKA_TOPICS"].split(",")
    for trigger in triggers:
        assert trigger["type"] == "kafka"
        assert trigger["authenticationRef"] == {"name": "kafka-scram"}
        metadata = trigger["metadata"]
        assert metadata["consumerGroup"] == settings["DCR_KAFKA_GROUP_ID"] == "dcr-stream-prod"
        assert metadata["bootstrapServers"] == settings["DCR_KAFKA_BOOTSTRAP_SERVERS"]
        assert metadata["lagThreshold"] == "5000"
        assert (metadata["sasl"], metadata["tls"]) == ("scram_sha512", "enable")
        assert all(isinstance(value, str) for value in metadata.values())
    assert "HorizontalPodAutoscaler" not in kinds(manifests)


def test_existing_secret_renders_no_secret_and_is_referenced_by_its_keys(helm: Helm) -> None:
    manifests = helm.render([EXISTING_SECRET])
    assert "Secret" not in kinds(manifests)
    refs = {
        var["name"]: var["valueFrom"]["secretKeyRef"]
        for var in container(manifests)["env"]
        if "secretKeyRef" in var.get("valueFrom", {})
    }
    assert refs == {
        "DCR_API_TOKEN": {"name": "dcr-credentials", "key": "api-token"},
        "DCR_KAFKA_SECRET_CONFIG": {
            "name": "dcr-credentials",
            "key": "kafka-secret-config",
            "optional": True,
        },
    }


def test_key_pair_credentials(helm: Helm) -> None:
    manifests = helm.render([KEY_PAIR])
    secret = only(manifests, "Secret")
    assert secret["data"].keys() == {"DCR_API_KEY_ID", "DCR_API_KEY"}
    env = service_env(manifests)
    assert (env["DCR_API_KEY_ID"], env["DCR_API_KEY"]) == ("test-key-id", "test-key-not-a-secret")
    assert "DCR_API_TOKEN" not in env


def test_the_token_can_be_mounted_as_a_file(helm: Helm) -> None:
    manifests = helm.render([TOKEN_FILE])
    main = container(manifests)
    env = {var["name"]: var for var in main["env"]}
    assert "DCR_API_TOKEN" not in env
    path = env["DCR_API_TOKEN_FILE"]["value"]
    mount = next(m for m in main["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    volume = next(v for v in pod_spec(manifests)["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == only(manifests, "Secret")["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "DCR_API_TOKEN", "path": Path(path).name}]


def test_the_service_account_carries_no_token(helm: Helm) -> None:
    manifests = helm.render([MINIMAL])
    account = only(manifests, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    assert pod_spec(manifests)["serviceAccountName"] == account["metadata"]["name"]


def test_disruption_budget_lets_one_pod_go_at_a_time(helm: Helm) -> None:
    manifests = helm.render([MINIMAL])
    budget = only(manifests, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    selector = only(manifests, "Deployment")["spec"]["selector"]
    assert budget["spec"]["selector"] == selector


def test_network_policy_and_service_monitor(helm: Helm) -> None:
    manifests = helm.render([NETWORK])
    policy = only(manifests, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert policy["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    egress_ports = [p["port"] for rule in policy["egress"] for p in rule["ports"]]
    assert egress_ports == [53, 53, 443, 9093, 8443]

    monitor = only(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service_labels = only(manifests, "Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]


def _checksum(helm: Helm, *sets: str) -> str:
    deployment = only(helm.render([MINIMAL], sets=sets), "Deployment")
    return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])


def test_config_changes_roll_the_pods(helm: Helm) -> None:
    base = _checksum(helm)
    assert len(base) == 64
    assert _checksum(helm, "logLevel=DEBUG") != base
    assert _checksum(helm, "batch.lingerMs=250") != base
    assert _checksum(helm, "auth.token=a-rotated-token") != base
    assert _checksum(helm, "podAnnotations.team=calls") == base  # not a setting


def test_the_image_defaults_to_the_app_version(helm: Helm) -> None:
    app_version = next(
        line.split(":", 1)[1].strip().strip('"')
        for line in (CHART / "Chart.yaml").read_text().splitlines()
        if line.startswith("appVersion:")
    )
    assert container(helm.render([MINIMAL]))["image"] == f"dcr-stream:{app_version}"
    digest = "sha256:" + "ab" * 32
    pinned = helm.render([MINIMAL], sets=[f"image.digest={digest}"])
    assert container(pinned)["image"] == f"dcr-stream@{digest}"


def test_missing_api_base_url_fails_with_a_clear_message(helm: Helm) -> None:
    error = helm.render_error(sets=["auth.token=t"])
    assert "api.baseUrl is required" in error


def test_hpa_and_keda_together_fail_with_a_clear_message(helm: Helm) -> None:
    error = helm.render_error(
        [MINIMAL], sets=["autoscaling.hpa.enabled=true", "autoscaling.keda.enabled=true"]
    )
    assert "autoscaling.hpa.enabled and autoscaling.keda.enabled are both true" in error


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["auth.existingSecret=mine"], "auth.existingSecret is set: put the credentials into"),
        (
            [
                "auth.token=",
                "auth.existingSecret=mine",
                "auth.mode=credentialsFile",
                "auth.credentials.5f0c2a55-2b8e-4a7e-9d3c-6a1f0e9b7c11.tokens={t}",
            ],
            "auth.existingSecret is set: put the credentials into",
        ),
        (
            ["auth.mode=keyPair", "auth.keyId=k", "auth.key=s", "auth.mountTokenAsFile=true"],
            "auth.mountTokenAsFile needs auth.mode=token",
        ),
        (
            [
                "auth.existingSecret=mine",
                "auth.token=",
                "auth.mode=credentialsFile",
                "auth.mountTokenAsFile=true",
            ],
            "auth.mountTokenAsFile needs auth.mode=token",
        ),
        (["kafka.config.sasl\\.password=p"], "is a secret: move it to kafka.secretConfig"),
        (["kafka.config.group\\.id=g"], "set kafka.groupId instead"),
        (["kafka.config.group\\.instance\\.id=i"], "set kafka.staticMembership instead"),
        (["kafka.highPriorityTopics={vip}"], '"vip" is not one of kafka.topics'),
        (["kafka.dlqTopic=call-intents"], "kafka.dlqTopic is one of kafka.topics"),
        (
            ["autoscaling.hpa.enabled=true", "autoscaling.minReplicas=5"],
            "autoscaling.minReplicas (5) is greater than autoscaling.maxReplicas (4)",
        ),
        (["extraConfig.DCR_LOG_LEVEL=DEBUG"], "extraConfig.DCR_LOG_LEVEL is set by the chart"),
        (
            ["extraConfig.DCR_API_CREDENTIALS_FILE=/etc/credentials.json"],
            "extraConfig.DCR_API_CREDENTIALS_FILE is set by the chart: use auth.mode instead",
        ),
        (
            ["extraConfig.DCR_API_CA_BUNDLE=/etc/ssl/ca.pem"],
            "extraConfig.DCR_API_CA_BUNDLE is set by the chart: use api.caBundle instead",
        ),
        (
            ["extraConfig.DCR_API_TOKEN=t"],
            "extraConfig.DCR_API_TOKEN is set by the chart: use auth.mode instead",
        ),
        (
            ["kafka.staticMembership=false", "extraConfig.DCR_KAFKA_INSTANCE_ID=i"],
            "extraConfig.DCR_KAFKA_INSTANCE_ID is set by the chart",
        ),
        (
            ["replicaCount=11", "quota.tokenSharing=false"],
            "11 replicas but quota.tokenPoolSize=10 token slots and quota.tokenSharing=false",
        ),
        (
            ["autoscaling.keda.enabled=true", "quota.tokenPoolSize=3", "quota.tokenSharing=false"],
            "4 replicas but quota.tokenPoolSize=3 token slots and quota.tokenSharing=false",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_clear_message(
    helm: Helm, sets: list[str], message: str
) -> None:
    assert message in helm.render_error([MINIMAL], sets=sets)


def test_the_realtime_values_reach_the_service(helm: Helm) -> None:
    defaults = load(service_env(helm.render([MINIMAL])))
    assert (defaults.realtime, defaults.urgent_within_s) == (True, 60)
    assert defaults.realtime_requests_per_second == 100
    sets = [
        "realtime.enabled=false",
        "realtime.urgentWithinSeconds=0",
        "json:realtime.requestsPerSecond=50.5",
    ]
    settings = config(helm.render([MINIMAL], sets=sets))
    assert settings["DCR_REALTIME"] == "off"
    assert settings["DCR_URGENT_WITHIN_S"] == "0"
    assert settings["DCR_REALTIME_REQUESTS_PER_SECOND"] == "50.5"
    loaded = load(service_env(helm.render([MINIMAL], sets=sets)))
    assert (loaded.realtime, loaded.urgent_within_s) == (False, 0)


def test_static_membership_takes_the_pod_name_and_can_be_turned_off(helm: Helm) -> None:
    loaded = load(service_env(helm.render([KAFKA_SASL])))
    assert loaded.kafka_instance_id == POD_NAME
    assert loaded.consumer_config()["group.instance.id"] == POD_NAME
    manifests = helm.render([KAFKA_SASL], sets=["kafka.staticMembership=false"])
    assert "DCR_KAFKA_INSTANCE_ID" not in service_env(manifests)
