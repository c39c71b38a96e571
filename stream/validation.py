"""Every rule of docs/events.md: bytes in, a ``Record`` or a ``Rejection`` out — never an exception.

msgspec decodes and checks types and ``Meta`` constraints in one pass (one reused ``Decoder``).
Only when that fails do we look closer, to give the failure its stable code. The rules msgspec
cannot express (phone normalisation, timestamp units, the window, expiry, the allow-list,
``call_reason``'s characters and edges) follow in ``_check``.

The fast path decodes into ``CallIntent`` less its UUID patterns, and checks the two UUIDs against
those already seen: a deployment has a handful of accounts and labels, and msgspec runs a pattern
through ``re`` on every decode, which was half the cost of a decode. Anything the fast path does not
accept is decoded again by the full ``CallIntent`` decoder, so every rejection is exactly the one
msgspec's own checks give.

The pipeline validates a consumed run of messages at a time (``validate_all``, one loop, cheapest
checks first); ``validate`` is the same code for one value (docs/design.md#the-hot-path). The
rules that depend on nothing but the value are remembered for the values that passed them: the
UUIDs (with their lowercase form) and the call reasons, which a deployment repeats.

Every code, its field and an example are listed in the README; ``CODES`` is the source of truth.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct
from msgspec.structs import force_setattr

from stream.events import UUID_PATTERN, CallIntent, Record, Uuid

__all__ = [
    "CODES",
    "ONLINE_CODES",
    "STATUS_CODES",
    "Rejection",
    "Rules",
    "check_expiry",
    "normalise_phone",
    "validate",
    "validate_all",
]

Stage = Literal["decode", "validate", "expired", "api", "status"]

CODES: dict[str, str] = {
    # decode: the bytes are not a call-intent object
    "empty_message": "the message has no value (a tombstone or zero bytes)",
    "message_too_large": "the value is larger than the configured maximum",
    "not_utf8": "the value is not valid UTF-8",
    "not_json": "the value is not valid JSON",
    "not_an_object": "the JSON value is not an object",
    "missing_field": "a required field is absent",
    "wrong_type": "a field has the wrong JSON type (or a number out of range)",
    # validate: the object breaks a rule
    "missing_client_account_id": "no client_account_id and no DCR_CLIENT_ACCOUNT_ID default",
    "invalid_uuid": "client_account_id or label_id is not a UUID",
    "invalid_phone": "caller or receiver is not 8-15 digits once + space - ( ) . are stripped",
    "label_name_length": "label_name is not 1-40 characters",
    "label_not_allowed": "label_id is not on the account's allow-list",
    "unknown_label": "label_id is not a dynamic label of the account (its label registry, or the "
    "API when the registry cannot be read, says so)",
    "call_reason_length": "call_reason is not 10-100 characters",
    "call_reason_characters": "call_reason holds one of ! @ # $ % ^ & * ( ) _ + /",
    "call_reason_edges": "call_reason starts or ends with . , - or white space",
    "invalid_priority": 'priority is neither "high" nor "normal"',
    "timestamp_seconds": "a timestamp is plainly in seconds, not milliseconds",
    "timestamp_microseconds": "a timestamp is plainly in microseconds, not milliseconds",
    "window_inverted": "starts_at is after ends_at",
    "window_too_long": "ends_at - starts_at is more than 24 h",
    "expired": "ends_at is in the past (on arrival, or just before sending)",
    # api: the API refused the record (see stream.api)
    "api_rejected": "the API answered 400/413/422 for this record alone",
    # status: the API accepted the record, then its batch status reported it failed
    # (stream.reconcile, docs/dlq.md#status)
    "not_truecaller_user": "the receiver is not a Truecaller user",
    "os_not_supported": "the receiver's phone runs an OS the API does not push to (Android only)",
    "app_version_not_supported": "the receiver's Truecaller app is too old",
    "push_failed": "the push to the receiver's phone failed (device unreachable)",
    "invalid_input": "the API found the record invalid after accepting its batch",
    "unknown_status": "no final status: a failure of no documented reason, or still pending "
    "after DCR_STATUS_GIVE_UP_S",
}


STATUS_CODES = (
    "not_truecaller_user",
    "os_not_supported",
    "app_version_not_supported",
    "push_failed",
    "invalid_input",
    "unknown_status",
)
"""The codes of stage ``status``: the documented failure reasons of a record's batch status."""

ONLINE_CODES = frozenset({"unknown_label", "api_rejected", *STATUS_CODES})
"""The codes only the running service gives: after validation, from the account's label registry
(or a probe) and from the API. ``validate`` never does, nor does ``dcr-stream validate``."""


class Rejection(Struct, frozen=True, kw_only=True):
    """Why a message is not delivered: a stable ``code``, the ``field`` if any, a human message."""

    code: str
    field: str | None
    message: str
    stage: Stage


class Rules(Struct, frozen=True, kw_only=True):
    """The configurable part of validation (docs/events.md, docs/configuration.md)."""

    default_account: str | None = None
    """``DCR_CLIENT_ACCOUNT_ID``: the account of events that name none."""
    allowed_labels: Mapping[str, frozenset[str]] = {}
    """``DCR_ALLOWED_LABEL_IDS``: per account, the label ids it may use; unlisted accounts: any."""
    max_message_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        # UUIDs are case-insensitive: rules and events are both compared lowercased.
        if self.default_account is not None:
            force_setattr(self, "default_account", self.default_account.lower())
        force_setattr(
            self,
            "allowed_labels",
            {
                account.lower(): frozenset(label.lower() for label in labels)
                for account, labels in self.allowed_labels.items()
            },
        )


MAX_WINDOW_MS = 24 * 3600 * 1000
_MS_FLOOR = 10**11
"""Below this an epoch value is seconds: 1e11 ms is 1973, 1e11 s is the year 5138."""
_MS_CEILING = 10**14
"""From this on it is microseconds: 1e14 ms is the year 5138, 1e14 µs is 1973."""

_decoder = msgspec.json.Decoder(CallIntent)
_UUID = re.compile(UUID_PATTERN)
_UUID_SHAPE = Annotated[str, Meta(min_length=36, max_length=36)]
_SEEN_MAX = 4096
"""Values remembered as valid, per kind; past this many the memory starts again (bounds odd
producers)."""
_uuids_seen: dict[str, str] = {}
"""UUIDs that match ``UUID_PATTERN``, each with its lowercase form (UUIDs compare lowercased)."""
_reasons_seen: set[str] = set()
"""Call reasons free of forbidden characters and edges (their length is msgspec's to check)."""
_callers_seen: dict[str, str] = {}
"""Caller numbers as written, normalised: a deployment calls from a few (receivers are unique)."""


def _without_uuid_patterns() -> Any:
    """``CallIntent`` with ``_UUID_SHAPE`` for ``Uuid``: the same decode, the patterns left out."""
    swaps = {Uuid: _UUID_SHAPE, Uuid | None: _UUID_SHAPE | None}
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    swapped = 0
    for field in msgspec.structs.fields(CallIntent):
        kind = swaps.get(field.type, field.type)
        swapped += kind is not field.type
        if field.required:
            fields.append((field.name, kind))
        else:
            fields.append((field.name, kind, field.default))
    assert swapped == 2, "CallIntent's UUID fields changed: revisit the fast path"
    return msgspec.defstruct("CallIntentFast", fields, kw_only=True, frozen=True, gc=False)


_fast_decoder = msgspec.json.Decoder(_without_uuid_patterns())
_PHONE_STRIP = b"+ -()."
_FORBIDDEN = frozenset("!@#$%^&*()_+/")
_EDGES = frozenset(".,-")
_AT_PATH = re.compile(r" - at `\$\.([A-Za-z_]+)")


def validate(
    value: bytes | None, *, rules: Rules, now_ms: int, high_priority_topic: bool = False
) -> Record | Rejection:
    """Decode and check one Kafka message value; the result is never an exception."""
    return validate_all(
        (value,), rules=rules, now_ms=now_ms, high_priority_topic=high_priority_topic
    )[0]


def validate_all(
    values: Iterable[bytes | None],
    *,
    rules: Rules,
    now_ms: int,
    high_priority_topic: bool = False,
) -> list[Record | Rejection]:
    """``validate`` each value, in order: the usual event (ASCII, within the size limit, UUIDs
    already seen) in this loop, any other through ``_validate_one``."""
    results: list[Record | Rejection] = []
    append, decode, uuids = results.append, _fast_decoder.decode, _uuids_seen
    max_bytes, default_account = rules.max_message_bytes, rules.default_account
    for value in values:
        event = None
        # isascii() is the allocation-free proof of UTF-8 (see _validate_one).
        if value and len(value) <= max_bytes and value.isascii():
            try:
                event = decode(value)
            except (msgspec.DecodeError, RecursionError):
                event = None
        if event is not None and event.label_id in uuids:
            account_id = event.client_account_id
            account = default_account if account_id is None else uuids.get(account_id)
            if account_id is None or account is not None:
                append(_check(event, account, rules, now_ms, high_priority_topic))
                continue
        append(_validate_one(value, rules, now_ms, high_priority_topic))
    return results


def _validate_one(
    value: bytes | None, rules: Rules, now_ms: int, high_priority_topic: bool
) -> Record | Rejection:
    if not value:
        return _reject("empty_message", None, "the message has no value", "decode")
    if len(value) > rules.max_message_bytes:
        return _reject(
            "message_too_large",
            None,
            f"{len(value)} bytes is more than the maximum of {rules.max_message_bytes}",
            "decode",
        )
    # msgspec raises UnicodeDecodeError for bad UTF-8 in a field it reads and ignores it in a field
    # it skips, so check first; isascii() is the allocation-free fast path for the usual event.
    if not value.isascii():
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return _reject(
                "not_utf8", None, f"not UTF-8: {exc.reason} at byte {exc.start}", "decode"
            )
    try:
        event = _fast_decoder.decode(value)
    except (msgspec.DecodeError, RecursionError):
        event = None
    if event is not None and _known_uuid(event.label_id):
        account_id = event.client_account_id
        if account_id is None or _known_uuid(account_id):
            account = rules.default_account if account_id is None else _uuids_seen[account_id]
            return _check(event, account, rules, now_ms, high_priority_topic)
    try:
        event = _decoder.decode(value)
    except msgspec.ValidationError as exc:
        return _from_validation_error(str(exc))
    except msgspec.DecodeError as exc:
        return _reject("not_json", None, f"not JSON: {exc}", "decode")
    except RecursionError:
        return _reject("not_json", None, "not JSON: nested too deeply", "decode")
    account_id = event.client_account_id
    account = account_id.lower() if account_id else rules.default_account
    return _check(event, account, rules, now_ms, high_priority_topic)


def _known_uuid(text: str) -> bool:
    """Whether ``text`` (36 characters) matches ``UUID_PATTERN``, remembering those that do."""
    if text in _uuids_seen:
        return True
    if _UUID.match(text) is None:
        return False
    if len(_uuids_seen) >= _SEEN_MAX:
        _uuids_seen.clear()
    _uuids_seen[text] = text.lower()
    return True


def normalise_phone(number: str) -> str | None:
    """Digits only once ``+``, spaces, ``-``, ``(``, ``)``, ``.`` are stripped; None unless 8-15."""
    # Most numbers arrive as +<digits> or <digits>: slicing is cheaper than stripping.
    digits = number[1:] if number[:1] == "+" else number
    if digits.isdigit() and digits.isascii():
        return digits if 8 <= len(digits) <= 15 else None
    # Stripping leaves any other character, so a number that is not ASCII is never valid; an
    # ASCII one is stripped as bytes, where translate() runs in C (str.translate looks up a dict).
    if not number.isascii():
        return None
    stripped = number.encode().translate(None, _PHONE_STRIP)
    if not stripped.isdigit():
        return None
    return stripped.decode() if 8 <= len(stripped) <= 15 else None


def check_expiry(ends_at: int, now_ms: int, stage: Stage) -> Rejection | None:
    """The expiry rule: on arrival (stage ``validate``) and just before sending (``expired``)."""
    if ends_at < now_ms:
        return _expired(ends_at, now_ms, stage)
    return None


def _expired(ends_at: int, now_ms: int, stage: Stage) -> Rejection:
    return _reject(
        "expired", "ends_at", f"ends_at {ends_at} is {now_ms - ends_at} ms in the past", stage
    )


def _check(
    event: CallIntent, account: str | None, rules: Rules, now_ms: int, high_priority_topic: bool
) -> Record | Rejection:
    """The rules msgspec cannot express, in the order of their codes; ``account`` is the event's
    own, lowercased, or the default."""
    if not account:
        return _reject(
            "missing_client_account_id",
            "client_account_id",
            "client_account_id is required when DCR_CLIENT_ACCOUNT_ID is not set",
            "validate",
        )
    # A number of 8-15 plain digits is its own normal form: no call needed.
    caller = event.caller
    if not (caller.isdigit() and caller.isascii() and 8 <= len(caller) <= 15):
        normal = _callers_seen.get(caller)
        if normal is None:
            normal = normalise_phone(caller)
            if normal is None:
                return _bad_phone("caller")
            if len(_callers_seen) >= _SEEN_MAX:
                _callers_seen.clear()
            _callers_seen[caller] = normal
        caller = normal
    receiver = event.receiver
    if not (receiver.isdigit() and receiver.isascii() and 8 <= len(receiver) <= 15):
        normal = normalise_phone(receiver)
        if normal is None:
            return _bad_phone("receiver")
        receiver = normal
    allowed = rules.allowed_labels.get(account)
    if allowed is not None and event.label_id.lower() not in allowed:
        return _reject(
            "label_not_allowed",
            "label_id",
            f"label_id {event.label_id} is not on the allow-list of account {account}",
            "validate",
        )
    reason = event.call_reason
    if reason is not None and reason not in _reasons_seen and (rejection := _check_reason(reason)):
        return rejection
    starts_at, ends_at = event.starts_at, event.ends_at
    if not (_MS_FLOOR <= starts_at < _MS_CEILING and _MS_FLOOR <= ends_at < _MS_CEILING):
        return _bad_unit(starts_at, ends_at)
    if starts_at > ends_at:
        return _reject("window_inverted", "ends_at", "ends_at is before starts_at", "validate")
    if ends_at - starts_at > MAX_WINDOW_MS:
        return _reject(
            "window_too_long",
            "ends_at",
            f"the window is {ends_at - starts_at} ms, more than 24 h",
            "validate",
        )
    if ends_at < now_ms:
        return _expired(ends_at, now_ms, "validate")
    return Record(
        account=account,
        caller=caller,
        receiver=receiver,
        # UUIDs are any case (docs/events.md): one case from here on, as the registry's ids.
        label_id=event.label_id.lower(),
        label_name=event.label_name,
        call_reason=reason,
        starts_at=starts_at,
        ends_at=ends_at,
        high_priority=high_priority_topic or event.priority == "high",
    )


def _bad_unit(starts_at: int, ends_at: int) -> Rejection:
    """The rejection of the first timestamp that is plainly seconds or microseconds."""
    if _MS_FLOOR <= starts_at < _MS_CEILING:
        name, stamp = "ends_at", ends_at
    else:
        name, stamp = "starts_at", starts_at
    if stamp < _MS_FLOOR:
        return _reject("timestamp_seconds", name, f"{name} {stamp} looks like seconds", "validate")
    return _reject(
        "timestamp_microseconds", name, f"{name} {stamp} looks like microseconds", "validate"
    )


def _check_reason(reason: str) -> Rejection | None:
    if not _FORBIDDEN.isdisjoint(reason):
        found = "".join(sorted(_FORBIDDEN.intersection(reason)))
        return _reject(
            "call_reason_characters",
            "call_reason",
            f"call_reason must not contain {found}",
            "validate",
        )
    for edge in (reason[0], reason[-1]):
        if edge in _EDGES or edge.isspace():
            return _reject(
                "call_reason_edges",
                "call_reason",
                "call_reason must not start or end with . , - or white space",
                "validate",
            )
    if len(_reasons_seen) >= _SEEN_MAX:
        _reasons_seen.clear()
    _reasons_seen.add(reason)
    return None


def _bad_phone(field: str) -> Rejection:
    return _reject(
        "invalid_phone",
        field,
        f"{field} must be 8-15 digits with country code once + space - ( ) . are stripped",
        "validate",
    )


_CONSTRAINT_CODES = {
    "client_account_id": "invalid_uuid",
    "label_id": "invalid_uuid",
    "caller": "invalid_phone",
    "receiver": "invalid_phone",
    "label_name": "label_name_length",
    "call_reason": "call_reason_length",
    "priority": "invalid_priority",
}
"""Each field has one ``Meta``/``Literal`` constraint, so the field alone names the broken rule."""


def _from_validation_error(text: str) -> Rejection:
    """Give msgspec's schema error its stable code; the text says what and where."""
    if text.startswith("Object missing required field"):
        field = text.split("`")[1]
        return _reject("missing_field", field, f"{field} is required", "decode")
    at = _AT_PATH.search(text)
    if at is None:
        return _reject("not_an_object", None, "the value must be a JSON object", "decode")
    field, what = at[1], text[: at.start()]
    code = _CONSTRAINT_CODES.get(field)
    if code is None or ", got `" in what or "out of range" in what:
        return _reject("wrong_type", field, f"{field}: {what}", "decode")
    if code == "invalid_uuid":
        what = "Expected a UUID"
    return _reject(code, field, f"{field}: {what}", "validate")


def _reject(code: str, field: str | None, message: str, stage: Stage) -> Rejection:
    return Rejection(code=code, field=field, message=message, stage=stage)
