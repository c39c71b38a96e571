"""Configuration: defaults, parsing, the errors that name the variable, TOML, secrets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stream.cli import main
from stream.config import load
from stream.errors import ConfigError
from stream.settings import SETTINGS

ACCOUNT = "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11"
LABEL = "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"
BASE = {"DCR_API_BASE_URL": "https://api.example", "DCR_API_TOKEN": "s3cr3t-token"}


def test_defaults() -> None:
    config = load(BASE)
    assert config.kafka_topics == ("call-intents",)
    assert config.dlq_topic == "call-intents.dlq"
    assert config.kafka_group_id == "dcr-stream"
    assert config.rate_limit_rps is None  # no cap: the tokens' paces (60 a minute each)
    assert config.token_pool_size == 10
    assert config.token_requests_per_minute == 60
    assert config.batch_max_records == 500
    assert config.batch_linger_ms == 1000
    assert config.http_port == 8080
    assert config.shutdown_timeout_s == 25
    assert config.api_version == "v1"
    assert config.consumer_config()["enable.auto.commit"] is False
    assert config.consumer_config()["partition.assignment.strategy"] == "cooperative-sticky"
    assert (config.realtime, config.urgent_within_s) == (True, 60)
    assert config.realtime_requests_per_second == 100
    assert config.kafka_instance_id is None
    assert "group.instance.id" not in config.consumer_config()
    assert "session.timeout.ms" not in config.consumer_config()  # librdkafka's 45 s


def test_static_membership_ids_every_group_and_stays_out_of_producers() -> None:
    config = load(BASE | {"DCR_KAFKA_INSTANCE_ID": "dcr-stream-7d9f8c6b5-x2k4q"})
    assert config.consumer_config()["group.instance.id"] == "dcr-stream-7d9f8c6b5-x2k4q"
    # A member gone for good never leaves: the broker's lowest session timeout bounds its stay.
    assert config.consumer_config()["session.timeout.ms"] == 6000
    assert config.consumer_config()["heartbeat.interval.ms"] == 1000
    assert "group.instance.id" not in config.client_config()
    override = load(
        BASE | {"DCR_KAFKA_INSTANCE_ID": "a", "DCR_KAFKA_CONFIG": '{"session.timeout.ms": "10000"}'}
    )
    assert override.consumer_config()["session.timeout.ms"] == "10000"


def test_the_real_time_lane_settings() -> None:
    env = BASE | {"DCR_REALTIME": "off", "DCR_URGENT_WITHIN_S": "0"}
    config = load(env | {"DCR_REALTIME_REQUESTS_PER_SECOND": "12.5"})
    assert (config.realtime, config.urgent_within_s) == (False, 0)
    assert config.realtime_requests_per_second == 12.5
    for variable, value in [
        ("DCR_REALTIME", "yes"),
        ("DCR_URGENT_WITHIN_S", "-1"),
        ("DCR_URGENT_WITHIN_S", "inf"),
        ("DCR_REALTIME_REQUESTS_PER_SECOND", "0"),
    ]:
        with pytest.raises(ConfigError, match=variable):
            load(BASE | {variable: value})


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DCR_API_BASE_URL": ""}, "DCR_API_BASE_URL"),
        ({"DCR_API_BASE_URL": "ftp://x"}, "DCR_API_BASE_URL"),
        ({"DCR_BATCH_MAX_RECORDS": "501"}, "DCR_BATCH_MAX_RECORDS"),
        ({"DCR_BATCH_MAX_RECORDS": "0"}, "DCR_BATCH_MAX_RECORDS"),
        ({"DCR_RATE_LIMIT_RPS": "-1"}, "DCR_RATE_LIMIT_RPS"),
        ({"DCR_RATE_LIMIT_RPS": "ten"}, "DCR_RATE_LIMIT_RPS"),
        ({"DCR_API_VERSION": "v3"}, "DCR_API_VERSION"),
        ({"DCR_CLIENT_ACCOUNT_ID": "nope"}, "DCR_CLIENT_ACCOUNT_ID"),
        ({"DCR_ALLOWED_LABEL_IDS": "x"}, "DCR_ALLOWED_LABEL_IDS"),
        ({"DCR_KAFKA_CONFIG": "[1]"}, "DCR_KAFKA_CONFIG"),
        ({"DCR_DLQ_TOPIC": "call-intents"}, "DCR_DLQ_TOPIC"),
        ({"DCR_API_KEY_ID": "k"}, "DCR_API_KEY_ID"),
        ({"DCR_HTTP_PORT": "70000"}, "DCR_HTTP_PORT"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load({**BASE, **env})
    assert caught.value.variable == variable


def test_no_auth_is_refused() -> None:
    with pytest.raises(ConfigError, match="DCR_API_TOKEN"):
        load({"DCR_API_BASE_URL": "https://api.example"})


def test_key_pair_needs_both_halves() -> None:
    with pytest.raises(ConfigError) as caught:
        load({"DCR_API_BASE_URL": "https://api.example", "DCR_API_KEY_ID": "k"})
    assert caught.value.variable == "DCR_API_KEY"


def test_allow_list_and_pass_through() -> None:
    config = load(
        {
            **BASE,
            "DCR_ALLOWED_LABEL_IDS": f"{ACCOUNT}:{LABEL}",
            "DCR_KAFKA_CONFIG": '{"security.protocol": "SASL_SSL", "max.poll.interval.ms": 60000}',
            "DCR_KAFKA_SECRET_CONFIG": '{"sasl.password": "hunter2"}',
        }
    )
    assert config.allowed_label_ids == {ACCOUNT: frozenset({LABEL})}
    assert config.consumer_config()["max.poll.interval.ms"] == "60000"
    assert config.consumer_config()["sasl.password"] == "hunter2"
    assert "max.poll.interval.ms" not in config.client_config()
    assert config.client_config()["security.protocol"] == "SASL_SSL"


def test_secrets_never_show_in_the_repr() -> None:
    config = load(
        {**BASE, "DCR_KAFKA_SECRET_CONFIG": '{"sasl.password": "hunter2"}'},
    )
    text = repr(config) + str(config)
    assert "s3cr3t-token" not in text
    assert "hunter2" not in text


def test_toml_file_with_the_environment_on_top(tmp_path: Path) -> None:
    path = tmp_path / "dcr.toml"
    path.write_text(
        'api_base_url = "https://file.example"\napi_token = "t"\n'
        'kafka_topics = ["a", "b"]\nbatch_linger_ms = 200\n'
    )
    config = load({"DCR_BATCH_LINGER_MS": "50"}, str(path))
    assert config.api_base_url == "https://file.example"
    assert config.kafka_topics == ("a", "b")
    assert config.dlq_topic == "a.dlq"
    assert config.batch_linger_ms == 50


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dcr.toml"
    path.write_text("linger = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        load(BASE, str(path))


def test_run_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for setting in SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)
    monkeypatch.setenv("DCR_API_BASE_URL", "https://api.example")
    monkeypatch.setenv("DCR_API_TOKEN", "t")
    monkeypatch.setenv("DCR_BATCH_LINGER_MS", "soon")
    assert main(["run"]) == 2
    assert "DCR_BATCH_LINGER_MS" in capsys.readouterr().err


def test_readme_lists_every_setting() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    listed = set(re.findall(r"^\| `(DCR_[A-Z_]+)` \|", readme, re.M))
    assert {s.env for s in SETTINGS} <= listed


def test_configuration_md_files_every_setting_under_a_concern() -> None:
    text = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    table = text.split("By concern:", 1)[1].split("\n\n", 2)[1]
    assert {s.env for s in SETTINGS} <= set(re.findall(r"`(DCR_[A-Z_]+)`", table))
