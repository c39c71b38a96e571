"""Every rule of docs/events.md on both sides of its boundary: one table, one row per case.

A row is a message value (and, where the rule needs them, rules, a clock or a topic) and the
verdict: ``OK`` or the rejection's code, field and stage. Time is injected, never read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from stream.events import CallIntent, Record
from stream.validation import CODES, ONLINE_CODES, Rejection, Rules, check_expiry, validate

NOW = 4_102_444_800_000
"""2100-01-01T00:00:00Z in epoch milliseconds: the injected clock of every row unless it says."""
HOUR = 3_600_000
DAY = 24 * HOUR
ACCOUNT = "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11"
OTHER_ACCOUNT = "9a3c2f6d-1b9e-4a11-8d0a-6f1c1c3e7d0a"
LABEL = "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"
OTHER_LABEL = "2d7f1e0c-3b9a-4c6e-8f15-a0b2c4d6e8f0"
ALLOW_LIST = Rules(allowed_labels={ACCOUNT: frozenset({LABEL})})
DROP = object()
"""A field value meaning: leave the field out."""


def event(**changes: Any) -> bytes:
    """A valid event with ``changes`` applied (``DROP`` removes a field), as Kafka carries it."""
    fields: dict[str, Any] = {
        "client_account_id": ACCOUNT,
        "caller": "+91 80 4000 1000",
        "receiver": "+91 98765 43210",
        "label_id": LABEL,
        "starts_at": NOW,
        "ends_at": NOW + HOUR,
    }
    fields.update(changes)
    return json.dumps({k: v for k, v in fields.items() if v is not DROP}).encode()


def padded(size: int) -> bytes:
    """A valid event of exactly ``size`` bytes (the padding is an unknown field)."""
    bare = event(padding="")
    return event(padding="x" * (size - len(bare)))


def digits(zero: int) -> str:
    """A valid phone number written in the script whose digit zero is at code point ``zero``."""
    return "".join(chr(zero + int(d)) for d in "918040001000")


def reason(text: str) -> bytes:
    return event(call_reason=text)


def stamps(starts_at: int, ends_at: int) -> bytes:
    return event(starts_at=starts_at, ends_at=ends_at)


@dataclass(frozen=True)
class Reject:
    code: str
    field: str | None
    stage: str


OK = None


def row(
    id: str,
    value: bytes | None,
    verdict: Reject | None,
    *,
    rules: Rules | None = None,
    now_ms: int = NOW,
    high_priority_topic: bool = False,
) -> Any:
    return pytest.param(value, verdict, rules or Rules(), now_ms, high_priority_topic, id=id)


def decode(code: str, field: str | None = None) -> Reject:
    return Reject(code, field, "decode")


def rule(code: str, field: str | None) -> Reject:
    return Reject(code, field, "validate")


REQUIRED = [f.name for f in msgspec.structs.fields(CallIntent) if f.required]
SECONDS = 10**11
"""The first epoch value read as milliseconds (1973); below it is seconds."""
MICROSECONDS = 10**14
"""The first epoch value read as microseconds (1e14 ms would be the year 5138)."""

TABLE = [
    row("valid", event(), OK),
    # label_name: 1-40 characters, counted as characters, not bytes
    row("label_name 40", event(label_name="L" * 40), OK),
    row("label_name 41", event(label_name="L" * 41), rule("label_name_length", "label_name")),
    row("label_name 1", event(label_name="L"), OK),
    row("label_name 0", event(label_name=""), rule("label_name_length", "label_name")),
    row("label_name 40 é", event(label_name="é" * 40), OK),
    row("label_name 41 é", event(label_name="é" * 41), rule("label_name_length", "label_name")),
    row(
        "label_name 40 é raw utf-8",
        event(label_name="é" * 40).replace(b"\\u00e9", "é".encode()),
        OK,
    ),
    row("label_name 40 astral", event(label_name="📞" * 40), OK),
    row("label_name null", event(label_name=None), OK),
    # call_reason: 10-100 characters, no forbidden character, clean edges
    row("call_reason 10", reason("R" * 10), OK),
    row("call_reason 9", reason("R" * 9), rule("call_reason_length", "call_reason")),
    row("call_reason 100", reason("R" * 100), OK),
    row("call_reason 101", reason("R" * 101), rule("call_reason_length", "call_reason")),
    row("call_reason 10 é", reason("é" * 10), OK),
    row("call_reason inner . , - space", reason("Order no. 42, ready - see you"), OK),
    row("call_reason null", event(call_reason=None), OK),
    *(
        row(
            f"call_reason with {c}",
            reason(f"Order {c} ready"),
            rule("call_reason_characters", "call_reason"),
        )
        for c in "!@#$%^&*()_+/"
    ),
    *(
        row(f"call_reason {side} {edge!r}", reason(text), rule("call_reason_edges", "call_reason"))
        for edge in (".", ",", "-", " ", "\t")
        for side, text in (("starts", f"{edge}Order is ready"), ("ends", f"Order is ready{edge}"))
    ),
    row(
        "call_reason ends with newline",
        reason("Order is ready\n"),
        rule("call_reason_edges", "call_reason"),
    ),
    row(
        "call_reason starts with nbsp",
        reason("\u00a0Order is ready"),
        rule("call_reason_edges", "call_reason"),
    ),
    # caller, receiver: 8-15 ASCII digits once + space - ( ) . are stripped
    *(
        row(f"{field} {name}", event(**{field: number}), verdict)
        for field in ("caller", "receiver")
        for name, number, verdict in (
            ("7 digits", "+123 456 7", rule("invalid_phone", field)),
            ("8 digits", "+123 456 78", OK),
            ("15 digits", "+1 (234) 567-8901.2345", OK),
            ("16 digits", "+1 (234) 567-8901.23456", rule("invalid_phone", field)),
            ("digits only", "918040001000", OK),
            ("empty", "", rule("invalid_phone", field)),
            ("separators only", "+ -().", rule("invalid_phone", field)),
            ("letters", "+91 80 CALL NOW", rule("invalid_phone", field)),
            ("slash", "+91/80/4000/1000", rule("invalid_phone", field)),
            ("tab", "+91\t8040001000", rule("invalid_phone", field)),
            ("arabic-indic digits", digits(0x0660), rule("invalid_phone", field)),
            ("devanagari digits", digits(0x0966), rule("invalid_phone", field)),
            ("fullwidth digits", digits(0xFF10), rule("invalid_phone", field)),
            ("superscript digits", "91804000100²", rule("invalid_phone", field)),
            ("65 characters", "9" * 65, rule("invalid_phone", field)),
        )
    ),
    # UUIDs: client_account_id and label_id
    *(
        row(f"{field} {name}", event(**{field: value}), verdict)
        for field in ("client_account_id", "label_id")
        for name, value, verdict in (
            ("upper case", ACCOUNT.upper(), OK),
            ("not a uuid", "not-a-uuid", rule("invalid_uuid", field)),
            ("no dashes", ACCOUNT.replace("-", ""), rule("invalid_uuid", field)),
            ("braces", "{" + ACCOUNT + "}", rule("invalid_uuid", field)),
            ("urn", "urn:uuid:" + ACCOUNT, rule("invalid_uuid", field)),
            ("trailing newline", ACCOUNT + "\n", rule("invalid_uuid", field)),
            ("35 hex digits", ACCOUNT[:-1], rule("invalid_uuid", field)),
            ("non-hex", ACCOUNT[:-1] + "g", rule("invalid_uuid", field)),
            ("empty", "", rule("invalid_uuid", field)),
        )
    ),
    # timestamps: milliseconds, not seconds, not microseconds
    row(
        "starts_at seconds edge",
        stamps(SECONDS - 1, SECONDS),
        rule("timestamp_seconds", "starts_at"),
        now_ms=SECONDS,
    ),
    row("starts_at ms edge", stamps(SECONDS, SECONDS), OK, now_ms=SECONDS),
    row(
        "ends_at seconds edge",
        stamps(SECONDS, SECONDS - 1),
        rule("timestamp_seconds", "ends_at"),
        now_ms=0,
    ),
    row("ends_at seconds", stamps(NOW, NOW // 1000), rule("timestamp_seconds", "ends_at")),
    row("starts_at seconds", stamps(NOW // 1000, NOW), rule("timestamp_seconds", "starts_at")),
    row("ends_at ms edge", stamps(MICROSECONDS - 1, MICROSECONDS - 1), OK, now_ms=MICROSECONDS - 1),
    row(
        "ends_at µs edge",
        stamps(MICROSECONDS - 1, MICROSECONDS),
        rule("timestamp_microseconds", "ends_at"),
        now_ms=0,
    ),
    row(
        "starts_at µs edge",
        stamps(MICROSECONDS, MICROSECONDS),
        rule("timestamp_microseconds", "starts_at"),
        now_ms=0,
    ),
    row(
        "starts_at µs", stamps(NOW * 1000, NOW + HOUR), rule("timestamp_microseconds", "starts_at")
    ),
    row("ends_at µs", stamps(NOW, (NOW + HOUR) * 1000), rule("timestamp_microseconds", "ends_at")),
    # the window: starts_at <= ends_at, at most 24 h
    row("window empty", stamps(NOW, NOW), OK),
    row("window inverted by 1 ms", stamps(NOW + 1, NOW), rule("window_inverted", "ends_at")),
    row("window 24 h", stamps(NOW, NOW + DAY), OK),
    row("window 24 h + 1 ms", stamps(NOW, NOW + DAY + 1), rule("window_too_long", "ends_at")),
    # expiry on arrival: ends_at not in the past
    row("ends_at == now", stamps(NOW - HOUR, NOW), OK, now_ms=NOW),
    row("ends_at == now - 1", stamps(NOW - HOUR, NOW), rule("expired", "ends_at"), now_ms=NOW + 1),
    row("starts_at in the past", stamps(NOW - HOUR, NOW + HOUR), OK, now_ms=NOW),
    # the allow-list: per account; case never matters; unlisted accounts may use any label
    row("allow-list: listed label", event(), OK, rules=ALLOW_LIST),
    row(
        "allow-list: other label",
        event(label_id=OTHER_LABEL),
        rule("label_not_allowed", "label_id"),
        rules=ALLOW_LIST,
    ),
    row("allow-list: label upper case", event(label_id=LABEL.upper()), OK, rules=ALLOW_LIST),
    row(
        "allow-list: account upper case",
        event(client_account_id=ACCOUNT.upper(), label_id=OTHER_LABEL),
        rule("label_not_allowed", "label_id"),
        rules=ALLOW_LIST,
    ),
    row(
        "allow-list: configured upper case",
        event(),
        OK,
        rules=Rules(allowed_labels={ACCOUNT.upper(): frozenset({LABEL.upper()})}),
    ),
    row(
        "allow-list: configured upper case, other label",
        event(label_id=OTHER_LABEL),
        rule("label_not_allowed", "label_id"),
        rules=Rules(allowed_labels={ACCOUNT.upper(): frozenset({LABEL.upper()})}),
    ),
    row(
        "allow-list: unlisted account",
        event(client_account_id=OTHER_ACCOUNT, label_id=OTHER_LABEL),
        OK,
        rules=ALLOW_LIST,
    ),
    row(
        "allow-list: default account",
        event(client_account_id=DROP, label_id=OTHER_LABEL),
        rule("label_not_allowed", "label_id"),
        rules=Rules(default_account=ACCOUNT, allowed_labels={ACCOUNT: frozenset({LABEL})}),
    ),
    # the account: the event's, else the default, else rejected
    row(
        "account missing",
        event(client_account_id=DROP),
        rule("missing_client_account_id", "client_account_id"),
    ),
    row(
        "account null",
        event(client_account_id=None),
        rule("missing_client_account_id", "client_account_id"),
    ),
    row("account default", event(client_account_id=DROP), OK, rules=Rules(default_account=ACCOUNT)),
    row(
        "account null, default",
        event(client_account_id=None),
        OK,
        rules=Rules(default_account=ACCOUNT),
    ),
    # size: the configured maximum is allowed, one byte more is not
    row("64 KiB", padded(64 * 1024), OK),
    row("64 KiB + 1", padded(64 * 1024 + 1), decode("message_too_large")),
    row("max", padded(500), OK, rules=Rules(max_message_bytes=500)),
    row("max + 1", padded(501), decode("message_too_large"), rules=Rules(max_message_bytes=500)),
    row("1 MiB of garbage", b"\xff" * 2**20, decode("message_too_large")),
    # the bytes: a value, UTF-8, JSON
    row("no value (tombstone)", None, decode("empty_message")),
    row("zero bytes", b"", decode("empty_message")),
    row(
        "not utf-8: latin-1 label_name",
        event(label_name="é").replace(b"\\u00e9", b"\xe9"),
        decode("not_utf8"),
    ),
    row(
        "not utf-8: in an unknown field",
        event(note="é").replace(b"\\u00e9", b"\xe9"),
        decode("not_utf8"),
    ),
    row(
        "not utf-8: overlong /", event(note="/").replace(b'"/"', b'"\xc0\xaf"'), decode("not_utf8")
    ),
    row(
        "not utf-8: encoded surrogate",
        event(note="x").replace(b'"x"', b'"\xed\xa0\x80"'),
        decode("not_utf8"),
    ),
    row("not utf-8: cut character", event() + "é".encode()[:1], decode("not_utf8")),
    row("not utf-8: utf-16", event().decode().encode("utf-16"), decode("not_utf8")),
    row("not json: truncated", event()[:-1], decode("not_json")),
    row("not json: trailing garbage", event() + b" x", decode("not_json")),
    row("not json: two objects", event() + event(), decode("not_json")),
    row("not json: single quotes", event().replace(b'"', b"'"), decode("not_json")),
    row("not json: trailing comma", event()[:-1] + b",}", decode("not_json")),
    row("not json: NaN", event(starts_at=float("nan")), decode("not_json")),
    row("not json: byte order mark", "\ufeff".encode() + event(), decode("not_json")),
    row("not json: lone surrogate escape", event(label_name="\ud800"), decode("not_json")),
    row("not json: text", b"hello", decode("not_json")),
    row(
        "not json: nested 10000 deep",
        event(deep=DROP)[:-1] + b', "deep": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        decode("not_json"),
    ),
    row("json with white space around", b" \n\t" + event() + b"\r\n ", OK),
    row("not an object: array", b"[" + event() + b"]", decode("not_an_object")),
    row("not an object: empty array", b"[]", decode("not_an_object")),
    row("not an object: string", b'"call me"', decode("not_an_object")),
    row("not an object: number", b"42", decode("not_an_object")),
    row("not an object: huge number", b"1" * 400, decode("not_an_object")),
    row("not an object: null", b"null", decode("not_an_object")),
    row("not an object: true", b"true", decode("not_an_object")),
    # the fields: present, of the right JSON type
    *(
        row(f"missing {field}", event(**{field: DROP}), decode("missing_field", field))
        for field in REQUIRED
    ),
    row("missing everything", b"{}", decode("missing_field", "caller")),
    row("caller number", event(caller=918040001000), decode("wrong_type", "caller")),
    row("receiver null", event(receiver=None), decode("wrong_type", "receiver")),
    row("label_id number", event(label_id=5), decode("wrong_type", "label_id")),
    row(
        "client_account_id object",
        event(client_account_id={}),
        decode("wrong_type", "client_account_id"),
    ),
    row("label_name number", event(label_name=5), decode("wrong_type", "label_name")),
    row(
        "call_reason list",
        event(call_reason=["Order is ready"]),
        decode("wrong_type", "call_reason"),
    ),
    row("starts_at string", event(starts_at=str(NOW)), decode("wrong_type", "starts_at")),
    row("starts_at float", event(starts_at=NOW + 0.5), decode("wrong_type", "starts_at")),
    row("starts_at integral float", event(starts_at=float(NOW)), decode("wrong_type", "starts_at")),
    row("starts_at bool", event(starts_at=True), decode("wrong_type", "starts_at")),
    row("ends_at null", event(ends_at=None), decode("wrong_type", "ends_at")),
    row(
        "ends_at 1e400",
        event(ends_at=0).replace(b'"ends_at": 0', b'"ends_at": 1e400'),
        decode("wrong_type", "ends_at"),
    ),
    row("priority number", event(priority=1), decode("wrong_type", "priority")),
    # priority
    row("priority high", event(priority="high"), OK),
    row("priority normal", event(priority="normal"), OK),
    row("priority null", event(priority=None), OK),
    row("priority urgent", event(priority="urgent"), rule("invalid_priority", "priority")),
    row("priority HIGH", event(priority="HIGH"), rule("invalid_priority", "priority")),
    row("priority empty", event(priority=""), rule("invalid_priority", "priority")),
    row("high-priority topic", event(), OK, high_priority_topic=True),
    # unknown fields are ignored, whatever they hold
    row(
        "unknown fields",
        event(note="hi", tags=["a", 1, None], meta={"a": {"b": [1.5]}}, big=10**40),
        OK,
    ),
    row("unknown field Priority", event(Priority="urgent"), OK),
]


@pytest.mark.parametrize(("value", "verdict", "rules", "now_ms", "high_priority_topic"), TABLE)
def test_rule(
    value: bytes | None,
    verdict: Reject | None,
    rules: Rules,
    now_ms: int,
    high_priority_topic: bool,
) -> None:
    result = validate(value, rules=rules, now_ms=now_ms, high_priority_topic=high_priority_topic)
    if verdict is OK:
        assert isinstance(result, Record), result
    else:
        assert isinstance(result, Rejection), result
        assert (result.code, result.field, result.stage) == (
            verdict.code,
            verdict.field,
            verdict.stage,
        ), result.message
        assert result.message


def test_the_table_reaches_every_code_an_event_can_earn() -> None:
    earned = {param.values[1].code for param in TABLE if param.values[1] is not OK}
    assert earned == set(CODES) - ONLINE_CODES


def test_a_record_is_the_event_normalised() -> None:
    value = event(
        caller="+1 (415) 555-0100",
        receiver="+44 20.7946.0000",
        label_name="Acme Deliveries",
        call_reason="Your parcel is on its way",
        priority="high",
    )
    assert validate(value, rules=Rules(), now_ms=NOW) == Record(
        account=ACCOUNT,
        caller="14155550100",
        receiver="442079460000",
        label_id=LABEL,
        label_name="Acme Deliveries",
        call_reason="Your parcel is on its way",
        starts_at=NOW,
        ends_at=NOW + HOUR,
        high_priority=True,
    )


@pytest.mark.parametrize("label", [LABEL, LABEL.upper(), LABEL[:9] + LABEL[9:].upper()])
def test_the_label_id_is_lower_case_whatever_its_case(label: str) -> None:
    # The label registry lists lower-case ids too (docs/events.md): any case of an id matches it.
    record = validate(event(label_id=label), rules=Rules(), now_ms=NOW)
    assert isinstance(record, Record)
    assert record.label_id == LABEL


@pytest.mark.parametrize(
    ("changes", "rules", "account"),
    [
        ({}, Rules(), ACCOUNT),
        ({"client_account_id": ACCOUNT.upper()}, Rules(), ACCOUNT),
        ({"client_account_id": DROP}, Rules(default_account=ACCOUNT.upper()), ACCOUNT),
        ({"client_account_id": OTHER_ACCOUNT}, Rules(default_account=ACCOUNT), OTHER_ACCOUNT),
    ],
    ids=["own", "own upper case", "default", "own wins over default"],
)
def test_the_account_is_resolved_and_lower_case(
    changes: dict[str, Any], rules: Rules, account: str
) -> None:
    record = validate(event(**changes), rules=rules, now_ms=NOW)
    assert isinstance(record, Record)
    assert record.account == account


@pytest.mark.parametrize(
    "label",
    [LABEL, LABEL.upper(), LABEL[:18] + LABEL[18:].upper()],
    ids=["lower", "upper", "mixed"],
)
@pytest.mark.parametrize(
    "rules",
    [Rules(), Rules(allowed_labels={ACCOUNT: frozenset({LABEL.upper()})})],
    ids=["any label", "allow-list in upper case"],
)
def test_the_label_id_is_lower_case(label: str, rules: Rules) -> None:
    """Compared with the allow-list and the label registry, and sent, in one case
    (docs/events.md)."""
    record = validate(event(label_id=label), rules=rules, now_ms=NOW)
    assert isinstance(record, Record)
    assert record.label_id == LABEL


@pytest.mark.parametrize(
    ("priority", "topic", "high"),
    [
        (DROP, False, False),
        (None, False, False),
        ("normal", False, False),
        ("high", False, True),
        (DROP, True, True),
        ("normal", True, True),
    ],
)
def test_high_priority_is_the_event_or_the_topic(priority: Any, topic: bool, high: bool) -> None:
    record = validate(
        event(priority=priority), rules=Rules(), now_ms=NOW, high_priority_topic=topic
    )
    assert isinstance(record, Record)
    assert record.high_priority is high


def test_optional_fields_absent_are_none() -> None:
    record = validate(event(), rules=Rules(), now_ms=NOW)
    assert isinstance(record, Record)
    assert (record.label_name, record.call_reason) == (None, None)


@pytest.mark.parametrize("stage", ["validate", "expired"])
def test_check_expiry(stage: Any) -> None:
    assert check_expiry(NOW, NOW, stage) is None
    assert check_expiry(NOW + 1, NOW, stage) is None
    rejection = check_expiry(NOW - 1, NOW, stage)
    assert rejection is not None
    assert (rejection.code, rejection.field, rejection.stage) == ("expired", "ends_at", stage)
    assert "1 ms in the past" in rejection.message
