"""The configuration table (docs/configuration.md): every ``DCR_*`` setting, its parser, its default
and its meaning, one ``Setting`` a row. The README's configuration table is this list (a test
checks that it lists every setting); ``stream.config`` reads them into a ``Config``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stream.errors import ConfigError
from stream.events import UUID_PATTERN
from stream.secrets import Secret

__all__ = ["SETTINGS", "Setting", "parse_positive", "parse_setting", "parse_uuid", "setting"]

_UUID = re.compile(UUID_PATTERN)


@dataclass(frozen=True, slots=True)
class Setting:
    """One row of the configuration table."""

    field: str
    parse: Callable[[str], Any]
    default: str | None
    """As the operator would write it; None means no default (unset)."""
    doc: str

    @property
    def env(self) -> str:
        return f"DCR_{self.field.upper()}"


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _list(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise ValueError("must name at least one")
    return items


def parse_uuid(value: str) -> str:
    if not _UUID.match(value.strip()):
        raise ValueError(f"{value!r} is not a UUID")
    return value.strip().lower()


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if number < low or (high is not None and number > high):
            raise ValueError(f"{number} is outside {low}..{high if high is not None else '∞'}")
        return number

    return parse


def parse_positive(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError(f"{value} must be a positive number")
    return number


def _non_negative(value: str) -> float:
    number = float(value)
    if not 0 <= number < float("inf"):
        raise ValueError(f"{value} must be zero or a positive number")
    return number


def _on_off(value: str) -> bool:
    return _choice("on", "off")(value) == "on"


def _choice(*options: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.strip() not in options:
            raise ValueError(f"{value!r} is not one of {', '.join(options)}")
        return value.strip()

    return parse


def _json_object(value: str) -> dict[str, str]:
    data = json.loads(value)
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object of librdkafka properties")
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in data.items()}


def _secret_object(value: str) -> dict[str, Secret]:
    return {k: Secret(v) for k, v in _json_object(value).items()}


def _labels(value: str) -> dict[str, frozenset[str]]:
    """``account:label,account:label`` → the allow-list per account."""
    allowed: dict[str, set[str]] = {}
    if not value.strip():
        return {}
    for entry in _list(value):
        account, sep, label = entry.partition(":")
        if not sep:
            raise ValueError(f"{entry!r} is not ACCOUNT_ID:LABEL_ID")
        allowed.setdefault(parse_uuid(account), set()).add(parse_uuid(label))
    return {account: frozenset(labels) for account, labels in allowed.items()}


def _url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value.strip()):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.strip().rstrip("/")


SETTINGS: tuple[Setting, ...] = (
    Setting("kafka_bootstrap_servers", _text, "localhost:9092", "Kafka bootstrap servers"),
    Setting("kafka_topics", _list, "call-intents", "input topics, comma-separated"),
    Setting("kafka_group_id", _text, "dcr-stream", "consumer group id"),
    Setting(
        "kafka_instance_id",
        _text,
        None,
        "static group membership id (the pod name in the chart): a restarted replica takes its "
        "partitions and token slots back at once, one gone for good is replaced within 6 s "
        "(docs/design.md#crash-recovery)",
    ),
    Setting(
        "kafka_high_priority_topics",
        lambda v: frozenset(_list(v)) if v.strip() else frozenset(),
        "",
        "input topics whose every event is high priority, hence urgent; read on while the others "
        "are paused (a fifth of `DCR_MAX_BUFFERED_RECORDS` is theirs, docs/design.md#backpressure)",
    ),
    Setting(
        "kafka_config",
        _json_object,
        "{}",
        'librdkafka pass-through, a JSON object, e.g. `{"security.protocol":"SASL_SSL"}`',
    ),
    Setting(
        "kafka_secret_config",
        _secret_object,
        "{}",
        'secret librdkafka properties, e.g. `{"sasl.password":"…"}`; never logged',
    ),
    Setting("dlq_topic", _text, None, "dead-letter topic; default `<first input topic>.dlq`"),
    Setting(
        "receipts_topic",
        _text,
        None,
        "delivery receipts topic; unset: none, or `<first input topic>.receipts` when reconciling",
    ),
    Setting(
        "reconcile",
        _choice("auto", "on", "off"),
        "auto",
        "fetch each accepted batch's status and report every record's outcome "
        "(docs/design.md#reconciliation); `auto`: on for `v2`, off for `v1`",
    ),
    Setting(
        "status_delay_s",
        parse_positive,
        "60",
        "how long after a batch was accepted its status is first fetched",
    ),
    Setting(
        "status_requests_per_minute",
        parse_positive,
        "30",
        "batch status requests per token in any rolling minute, apart from the batch quota",
    ),
    Setting(
        "status_give_up_s",
        parse_positive,
        "3600",
        "a record whose status is still pending this long after its batch was accepted is "
        "reported `unknown_status`",
    ),
    Setting("api_base_url", _url, None, "**required**: the API's base URL"),
    Setting("api_version", _choice("v1", "v2"), "v1", "`v1` or `v2` endpoint and body"),
    Setting(
        "api_token",
        lambda v: Secret(_text(v)),
        None,
        "static bearer tokens, comma-separated (a pool: each token paced on its own)",
    ),
    Setting(
        "api_token_file",
        _text,
        None,
        "a file of static tokens, one per line, re-read when it changes",
    ),
    Setting("api_key_id", _text, None, "key id for minting tokens (with `DCR_API_KEY`)"),
    Setting("api_key", lambda v: Secret(_text(v)), None, "API key for minting tokens"),
    Setting(
        "api_credentials_file",
        _text,
        None,
        "credentials per account, JSON or TOML: account → `{key_id, api_key}` or `{tokens}`; "
        "re-read when it changes",
    ),
    Setting("api_ca_bundle", _text, None, "PEM file of CAs to trust for the API (TLS stays on)"),
    Setting("api_timeout_s", parse_positive, "30", "total timeout of one API request"),
    Setting(
        "auth_give_up_s",
        parse_positive,
        "300",
        "an account whose credentials are refused this long has its records dead-lettered as "
        "auth_refused; it is tried again when its credentials change or a mint succeeds",
    ),
    Setting("client_account_id", parse_uuid, None, "account of events that carry none"),
    Setting(
        "allowed_label_ids",
        _labels,
        "",
        "allow-list, `ACCOUNT:LABEL,…`, instead of the account's label registry",
    ),
    Setting(
        "labels_refresh_s",
        parse_positive,
        "300",
        "how often each account's label registry is read again (sooner, coalesced, when a record "
        "carries a label it does not list)",
    ),
    Setting(
        "rate_limit_rps",
        parse_positive,
        None,
        "optional cap on requests per second per account and process, retries included; unset: "
        "only the tokens' paces",
    ),
    Setting(
        "token_pool_size",
        _int(1, 10),
        "10",
        "token slots per account: tokens minted per account (the API mints at most 10 per 30 "
        "minutes), shared by the replicas",
    ),
    Setting(
        "token_requests_per_minute",
        parse_positive,
        "60",
        "requests per token in any rolling minute, spread evenly (the API allows 60)",
    ),
    Setting(
        "token_lifetime_s",
        parse_positive,
        "3600",
        "lifetime of a minted token (the API's: 60 minutes); a slot mints its next token 10 "
        "minutes (a sixth of a shorter life) before its token ends",
    ),
    Setting(
        "mint_budget",
        _int(1),
        "10",
        "tokens the API mints per account in any DCR_MINT_WINDOW_S (the API's: 10); each of the "
        "DCR_TOKEN_POOL_SIZE slots may spend its share, and slots beyond the budget never mint",
    ),
    Setting(
        "mint_window_s",
        parse_positive,
        "1800",
        "the window of DCR_MINT_BUDGET (the API's: 30 minutes)",
    ),
    Setting(
        "token_topic",
        _text,
        None,
        "compacted topic of token slots, a partition per slot (created if missing), leased to "
        "the replicas by the group `<group>.tokens`; default `<DCR_KAFKA_GROUP_ID>.tokens`",
    ),
    Setting(
        "token_sharing",
        _on_off,
        "on",
        "`on`: every replica sends batches on every token of an account, each request claimed "
        "through the topic `<DCR_TOKEN_TOPIC>.claims` (at most one per token in each 1.02 s), so "
        "tokens follow the backlog (docs/design.md#scaling); `off`: only on its own slots' tokens",
    ),
    Setting(
        "realtime",
        _on_off,
        "on",
        "`on`: urgent records go to the single-record endpoint at once (docs/design.md#real-time); "
        "`off`: every record is batched",
    ),
    Setting(
        "urgent_within_s",
        _non_negative,
        "60",
        "a record whose `starts_at` is ahead by less than this is urgent (as is a high-priority "
        "one); 0: only priority makes a record urgent",
    ),
    Setting(
        "realtime_requests_per_second",
        parse_positive,
        "100",
        "single-record requests per token in any rolling second (the API allows 100), a pace of "
        "its own beside the batch pace",
    ),
    Setting("batch_max_records", _int(1, 500), "500", "records per request (the API allows 500)"),
    Setting("batch_linger_ms", _int(0), "1000", "longest wait of a record for its batch to fill"),
    Setting("batch_max_bytes", _int(1024), "1000000", "cap on a request body's bytes"),
    Setting("max_message_bytes", _int(1), "65536", "larger Kafka values are dead-lettered"),
    Setting(
        "max_buffered_records",
        _int(1),
        "20000",
        "records consumed but not yet done; above it partitions pause, below half they resume",
    ),
    Setting("retry_base_ms", _int(1), "500", "first retry delay bound (doubles, full jitter)"),
    Setting(
        "retry_cap_ms", _int(1), "30000", "longest retry delay (a `Retry-After` may be longer)"
    ),
    Setting(
        "commit_interval_ms",
        _int(10),
        "100",
        "how often finished offsets are committed (a crash re-sends at most this much more)",
    ),
    Setting("http_port", _int(0, 65535), "8080", "port of /metrics, /healthz, /readyz"),
    Setting(
        "shutdown_timeout_s", parse_positive, "25", "drain bound on SIGTERM (below the pod's grace)"
    ),
    Setting(
        "liveness_stall_s",
        parse_positive,
        "60",
        "/healthz fails when the consumer has not polled for this long (a commit waiting for an "
        "unreachable broker does not count)",
    ),
    Setting(
        "stuck_warn_s",
        parse_positive,
        "180",
        "a warning is logged (once per stall) when a partition's oldest unfinished record is older "
        "than this (docs/design.md#bounded-progress)",
    ),
    Setting(
        "metrics_per_account",
        _on_off,
        "on",
        "`on`: metrics carry each account (and token slot) as a label; `off`: one series for all "
        "accounts (label `*`), for deployments that serve many (docs/operations.md#metrics)",
    ),
    Setting("log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", "log level"),
)


def setting(env: Mapping[str, str], field: str) -> Any:
    """One setting, parsed from ``env`` (or its default), for the tools that read a few of the
    service's settings (``produce``, ``replay``); a bad value raises ``ConfigError``."""
    row = next(s for s in SETTINGS if s.field == field)
    return parse_setting(row, env.get(row.env))


def parse_setting(row: Setting, text: str | None) -> Any:
    """``text`` (or, when None, the default) parsed; None for an unset setting without default."""
    text = row.default if text is None else text
    if text is None or (text == "" and row.default is None):
        return None
    try:
        return row.parse(text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(row.env, str(exc)) from None
