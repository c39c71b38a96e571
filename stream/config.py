"""Configuration (docs/configuration.md): ``DCR_*`` variables over an optional TOML file.

Each setting is one row of ``stream.settings.SETTINGS``: its variable, its parser, its default and
its meaning. A TOML file uses the same names in lower case without the prefix
(``api_base_url = "…"``); the environment wins over the file.
A bad value raises ``ConfigError`` naming the variable; the command line turns it into exit 2.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import msgspec

from stream.errors import ConfigError
from stream.events import UUID_PATTERN
from stream.minting import MintBudget
from stream.secrets import Secret
from stream.settings import SETTINGS, parse_setting

__all__ = [
    "Config",
    "client_properties",
    "default_dlq_topic",
    "default_receipts_topic",
    "load",
]

_UUID = re.compile(UUID_PATTERN)

STATIC_SESSION_TIMEOUT_MS = 6000
"""``session.timeout.ms`` of a static member: the broker's lowest by default
(``group.min.session.timeout.ms``). A restart does not wait for it (the same ``group.instance.id``
takes the old member's place at once); it bounds how long a replica gone for good (SIGTERM before a
scale-down, a replaced pod) keeps its partitions and slots, since librdkafka never sends a static
member's LeaveGroup (docs/design.md#crash-recovery). Heartbeats run on librdkafka's own thread, so
a busy event loop does not miss them."""


class Config(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting, parsed; secrets are ``Secret`` so a repr or a log line never shows them."""

    kafka_bootstrap_servers: str
    kafka_topics: tuple[str, ...]
    kafka_group_id: str
    kafka_instance_id: str | None
    kafka_high_priority_topics: frozenset[str]
    kafka_config: dict[str, str]
    kafka_secret_config: dict[str, Secret]
    dlq_topic: str
    receipts_topic: str | None
    reconcile: bool
    """Whether batch statuses are reconciled (``DCR_RECONCILE``, ``auto`` resolved by version)."""
    status_delay_s: float
    status_requests_per_minute: float
    status_give_up_s: float
    api_base_url: str
    api_version: Literal["v1", "v2"]
    api_token: Secret | None
    api_token_file: str | None
    api_key_id: str | None
    api_key: Secret | None
    api_credentials_file: str | None
    api_ca_bundle: str | None
    api_timeout_s: float
    auth_give_up_s: float
    client_account_id: str | None
    allowed_label_ids: dict[str, frozenset[str]]
    labels_refresh_s: float
    rate_limit_rps: float | None
    token_pool_size: int
    token_requests_per_minute: float
    token_lifetime_s: float
    mint_budget: int
    mint_window_s: float
    token_topic: str
    token_sharing: bool
    realtime: bool
    urgent_within_s: float
    realtime_requests_per_second: float
    batch_max_records: int
    batch_linger_ms: int
    batch_max_bytes: int
    max_message_bytes: int
    max_buffered_records: int
    retry_base_ms: int
    retry_cap_ms: int
    commit_interval_ms: int
    http_port: int
    shutdown_timeout_s: float
    liveness_stall_s: float
    stuck_warn_s: float
    metrics_per_account: bool
    log_level: str

    @property
    def minting(self) -> MintBudget:
        """The API's token numbers, as the token pools use them."""
        return MintBudget(self.token_lifetime_s, self.mint_budget, self.mint_window_s)

    def consumer_config(self) -> dict[str, str | int | float | bool]:
        """librdkafka properties: ours, then the pass-through (which may override any of them).

        The prefetch queue is bounded at 8 MiB (librdkafka's default is 64 MiB plus a fetch): the
        service buffers its own ``max_buffered_records`` anyway, and with the API down the prefetch
        is most of the memory held (``bench/`` B4). A partition whose queue is full waits
        ``fetch.queue.backoff.ms`` before it is fetched again: 20 ms, not the default second, so a
        small queue never leaves the consumer waiting (B1).

        With ``kafka_instance_id`` every group this process joins (input, token slots,
        reconciliation) knows it as a static member, so a restarted container takes its partitions
        back at once; librdkafka never sends a static member's LeaveGroup, so the session timeout
        is the broker's minimum and a replica gone for good is replaced within it
        (docs/design.md#crash-recovery).
        """
        return {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "group.id": self.kafka_group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "queued.max.messages.kbytes": 8192,
            "fetch.queue.backoff.ms": 20,
            **self._static_membership(),
            **self.kafka_config,
            **{k: v.reveal() for k, v in self.kafka_secret_config.items()},
        }

    def _static_membership(self) -> dict[str, str | int]:
        if self.kafka_instance_id is None:
            return {}
        return {
            "group.instance.id": self.kafka_instance_id,
            "session.timeout.ms": STATIC_SESSION_TIMEOUT_MS,
            # The survivors learn of the expiry at their next heartbeat: one a second.
            "heartbeat.interval.ms": STATIC_SESSION_TIMEOUT_MS // 6,
        }

    def client_config(self) -> dict[str, str | int | float | bool]:
        """Properties for producers and admin clients: the connection part of the pass-through."""
        return client_properties(
            self.kafka_bootstrap_servers, self.kafka_config, self.kafka_secret_config
        )


def client_properties(
    bootstrap_servers: str, config: Mapping[str, str], secret_config: Mapping[str, Secret]
) -> dict[str, str | int | float | bool]:
    """librdkafka properties for a producer or an admin client (the service's DLQ and receipts,
    the tools' producers): the pass-through without the consumer-only properties, which a producer
    would warn about."""
    return {
        "bootstrap.servers": bootstrap_servers,
        **{k: v for k, v in config.items() if not _consumer_only(k)},
        **{k: v.reveal() for k, v in secret_config.items()},
    }


def default_dlq_topic(topics: Sequence[str]) -> str:
    """``DCR_DLQ_TOPIC`` when it is not set: ``<first input topic>.dlq``."""
    return f"{topics[0]}.dlq"


def default_receipts_topic(topics: Sequence[str]) -> str:
    """``DCR_RECEIPTS_TOPIC`` when it is not set and reconciliation is on:
    ``<first input topic>.receipts``."""
    return f"{topics[0]}.receipts"


def _consumer_only(prop: str) -> bool:
    return prop.startswith(
        ("group.", "partition.assignment", "session.", "heartbeat.")
    ) or prop in {
        "auto.offset.reset",
        "enable.auto.commit",
        "max.poll.interval.ms",
        "fetch.min.bytes",
        "fetch.max.bytes",
        "fetch.wait.max.ms",
        "max.partition.fetch.bytes",
        "queued.min.messages",
        "queued.max.messages.kbytes",
        "isolation.level",
        "enable.auto.offset.store",
    }


def load(env: Mapping[str, str], toml_path: str | None = None) -> Config:
    """Parse and check every setting; the first problem raises ``ConfigError``."""
    raw: dict[str, str] = {}
    if toml_path is not None:
        raw = _from_toml(toml_path)
    for row in SETTINGS:
        if row.env in env:
            raw[row.field] = env[row.env]
    values: dict[str, Any] = {row.field: parse_setting(row, raw.get(row.field)) for row in SETTINGS}
    if values["api_base_url"] is None:
        raise ConfigError("DCR_API_BASE_URL", "is required (the API's base URL)")
    _check_auth(values)
    values["dlq_topic"] = values["dlq_topic"] or default_dlq_topic(values["kafka_topics"])
    values["reconcile"] = values["reconcile"] == "on" or (
        values["reconcile"] == "auto" and values["api_version"] == "v2"
    )
    if values["reconcile"] and values["receipts_topic"] is None:
        values["receipts_topic"] = default_receipts_topic(values["kafka_topics"])
    if values["receipts_topic"] in values["kafka_topics"]:
        raise ConfigError("DCR_RECEIPTS_TOPIC", "must not be one of the input topics")
    values["token_topic"] = values["token_topic"] or f"{values['kafka_group_id']}.tokens"
    if values["token_topic"] in values["kafka_topics"]:
        raise ConfigError("DCR_TOKEN_TOPIC", "must not be one of the input topics")
    if values["dlq_topic"] in values["kafka_topics"]:
        raise ConfigError("DCR_DLQ_TOPIC", "must not be one of the input topics")
    if values["retry_cap_ms"] < values["retry_base_ms"]:
        raise ConfigError("DCR_RETRY_CAP_MS", "must not be below DCR_RETRY_BASE_MS")
    return Config(**values)


def _check_auth(values: dict[str, Any]) -> None:
    modes = [
        name
        for name, present in (
            ("DCR_API_TOKEN", values["api_token"] is not None),
            ("DCR_API_TOKEN_FILE", values["api_token_file"] is not None),
            ("DCR_API_KEY_ID", values["api_key_id"] is not None or values["api_key"] is not None),
            ("DCR_API_CREDENTIALS_FILE", values["api_credentials_file"] is not None),
        )
        if present
    ]
    if not modes:
        raise ConfigError(
            "DCR_API_TOKEN",
            "set DCR_API_TOKEN, DCR_API_TOKEN_FILE, DCR_API_KEY_ID + DCR_API_KEY or "
            "DCR_API_CREDENTIALS_FILE",
        )
    if len(modes) > 1:
        raise ConfigError(modes[1], f"conflicts with {modes[0]}: choose one way to authenticate")
    if (values["api_key_id"] is None) != (values["api_key"] is None):
        missing = "DCR_API_KEY" if values["api_key"] is None else "DCR_API_KEY_ID"
        raise ConfigError(missing, "DCR_API_KEY_ID and DCR_API_KEY go together")


def _from_toml(path: str) -> dict[str, str]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("--config", f"{path}: {exc}") from None
    known = {s.field for s in SETTINGS}
    raw: dict[str, str] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError("--config", f"{path}: unknown setting {key!r}")
        if isinstance(value, list):
            value = ",".join(map(str, value))
        elif isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, bool):
            value = str(value).lower()
        raw[key] = str(value)
    return raw
