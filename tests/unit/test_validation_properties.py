"""Whatever arrives, ``validate`` answers with a ``Record`` or a ``Rejection``, never an exception.

Derandomised, so a run is reproducible; the JSON strategies lean on the real field names and on
values near every boundary, where the interesting failures live.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.events import CallIntent, Record, encode_batch
from stream.validation import CODES, MAX_WINDOW_MS, Rejection, Rules, validate

NOW = 4_102_444_800_000
ACCOUNT = "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11"
FIELDS = list(CallIntent.__struct_fields__)
CHECKED = settings(max_examples=1000, deadline=None, derandomize=True, database=None)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats()
    | st.text()
    | st.text(st.characters() | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF))
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
"""Any JSON value, NaN and infinities included (``json.dumps`` writes them; they are not JSON)."""

stamps = st.integers(min_value=NOW - MAX_WINDOW_MS, max_value=NOW + MAX_WINDOW_MS) | (
    st.sampled_from([10**11, 10**14, NOW // 1000, NOW * 1000]).flatmap(
        lambda edge: st.integers(min_value=edge - 2, max_value=edge + 2)
    )
)
windows = st.integers(min_value=-2, max_value=MAX_WINDOW_MS + 2) | st.sampled_from(
    [-1, 0, MAX_WINDOW_MS, MAX_WINDOW_MS + 1]
)
phones = st.builds(
    lambda prefix, digits: prefix + digits,
    st.text(alphabet="+ -().", max_size=3),
    st.sampled_from(range(8, 16)).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n)),
)
uuids = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
reasons = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 .,'-]{7,99}[A-Za-z0-9]", fullmatch=True) | st.text(
    alphabet=st.characters(codec="utf-8"), min_size=8, max_size=102
)
optional = {
    "label_name": st.text(min_size=1, max_size=41),
    "call_reason": reasons,
    "priority": st.sampled_from(["high", "normal", None, "HIGH"]),
}
near_misses = st.sampled_from(
    ["", "1234567", "1" * 16, "\u0660" * 10, "1234567\n", ACCOUNT + "\n", "high ", "{}"]
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """Objects built from the real field names: plausible values, then up to two fields dropped
    or given an arbitrary JSON value or a near miss, plus unknown fields."""
    starts_at = draw(stamps)
    event: dict[str, Any] = {
        "client_account_id": draw(uuids),
        "caller": draw(phones),
        "receiver": draw(phones),
        "label_id": draw(uuids),
        "starts_at": starts_at,
        "ends_at": starts_at + draw(windows),
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            event[name] = draw(values)
    for name in draw(st.sets(st.sampled_from([*FIELDS, "Priority", "extra"]), max_size=2)):
        if draw(st.booleans()):
            event.pop(name, None)
        else:
            event[name] = draw(json_values | near_misses)
    return event


assert set(FIELDS) == {
    "client_account_id",
    "caller",
    "receiver",
    "label_id",
    "starts_at",
    "ends_at",
    *optional,
}

rules = st.builds(
    Rules,
    default_account=st.none() | st.just(ACCOUNT),
    max_message_bytes=st.sampled_from([64 * 1024, 64 * 1024, 300]),
)


def as_bytes(value: Any, ascii_only: bool) -> bytes:
    # surrogatepass: a lone surrogate in a string becomes the bytes a careless producer would send.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", errors="surrogatepass")


def assert_well_formed(result: Record | Rejection, now_ms: int) -> None:
    if isinstance(result, Rejection):
        assert result.code in CODES
        assert result.code != "api_rejected"
        assert result.stage in ("decode", "validate")
        assert result.field is None or result.field in FIELDS
        assert result.message
        return
    assert isinstance(result, Record)
    for number in (result.caller, result.receiver):
        assert number.isascii()
        assert number.isdigit()
        assert 8 <= len(number) <= 15
    assert 10**11 <= result.starts_at <= result.ends_at < 10**14
    assert result.ends_at - result.starts_at <= MAX_WINDOW_MS
    assert result.ends_at >= now_ms
    for version in ("v1", "v2"):
        body = msgspec.json.decode(encode_batch([result], version))
        assert len(body["call_records"]) == 1


@CHECKED
@given(value=st.binary(max_size=300), rules=rules)
def test_any_bytes(value: bytes, rules: Rules) -> None:
    assert_well_formed(validate(value, rules=rules, now_ms=NOW), NOW)


@CHECKED
@given(value=json_values, ascii_only=st.booleans(), rules=rules)
def test_any_json_value(value: Any, ascii_only: bool, rules: Rules) -> None:
    assert_well_formed(validate(as_bytes(value, ascii_only), rules=rules, now_ms=NOW), NOW)


@CHECKED
@given(
    value=events(),
    ascii_only=st.booleans(),
    rules=rules,
    now_ms=st.sampled_from([0, NOW]),
    high=st.booleans(),
)
def test_any_event_shaped_object(
    value: dict[str, Any], ascii_only: bool, rules: Rules, now_ms: int, high: bool
) -> None:
    raw = as_bytes(value, ascii_only)
    result = validate(raw, rules=rules, now_ms=now_ms, high_priority_topic=high)
    assert_well_formed(result, now_ms)
    if isinstance(result, Record):
        assert result.high_priority == (high or value.get("priority") == "high")


@CHECKED
@given(value=events(), at=st.floats(0, 1), junk=st.binary(min_size=1, max_size=3), rules=rules)
def test_any_event_with_bytes_spliced_in(
    value: dict[str, Any], at: float, junk: bytes, rules: Rules
) -> None:
    raw = as_bytes(value, ascii_only=False)
    cut = int(len(raw) * at)
    assert_well_formed(validate(raw[:cut] + junk + raw[cut:], rules=rules, now_ms=NOW), NOW)
