"""The sandbox's batch rules: check a body as the API documents it, keep what it accepts.

The single-record endpoint's body (one wire record, docs/api.md#single-record) is checked by the
same per-record rules (``check_record``) and kept as a batch of one whose ``path`` is
``realtime``, so the ledger tells which path each record took.

A body is checked record by record, in order. Each is decoded as its version's wire record
(``stream.events.WireV1``/``WireV2``: optional fields absent, never null), mapped to the call-intent
shape and handed to ``stream.validation.validate``, the code that checks events on arrival, so the
sandbox and the service cannot disagree on a rule (docs/events.md). The first record that fails
refuses the whole batch with a 400 naming its index: what makes a client bisect
(docs/design.md#rejection).

Accepted records are stored as one msgpack array per batch without field names: about 120 bytes a
record for 12-digit numbers, a label id and a 30-character reason, so a million fit in a test.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import msgspec
from msgspec import UNSET, Struct

from stream.events import CallIntent, WireV1, WireV2
from stream.validation import Rejection, Rules, validate

__all__ = [
    "MAX_RECORDS",
    "Accepted",
    "Batch",
    "Path",
    "Refusal",
    "Version",
    "check_batch",
    "check_record",
]

MAX_RECORDS = 500
"""Records a batch request may hold (docs/api.md); more are answered 413."""

Version = Literal["v1", "v2"]
Path = Literal["batch", "realtime"]
"""Which endpoint accepted a record: the batch endpoint or the single-record one."""


class Accepted(Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One accepted record, normalised, with when and how it arrived (a line of ``accepted``)."""

    account: str
    api_version: Version
    path: Path
    batch_id: str
    """Empty for a record of the single-record endpoint (it has no batch)."""
    received_ms: int
    """Wall time of arrival, epoch milliseconds: compare with the event's produce time."""
    received_monotonic_ms: float
    caller: str
    receiver: str
    label_id: str
    starts_at: int
    ends_at: int
    label_name: str | None = None
    call_reason: str | None = None


class Refusal(NamedTuple):
    """A batch refused as a whole: the status and JSON body to answer."""

    status: int
    body: dict[str, object]


class _Row(Struct, frozen=True, array_like=True, gc=False):
    caller: str
    receiver: str
    label_id: str
    starts_at: int
    ends_at: int
    label_name: str | None
    call_reason: str | None


_rows_encoder = msgspec.msgpack.Encoder()
_rows_decoder = msgspec.msgpack.Decoder(list[_Row])


class Batch(NamedTuple):
    """An accepted batch as stored: its records packed, its arrival once for all of them."""

    account: str
    version: Version
    batch_id: str
    received_ms: int
    received_monotonic_ms: float
    size: int
    rows: bytes
    """msgpack of the records as field-less arrays."""
    path: Path = "batch"

    def records(self) -> list[Accepted]:
        return [
            Accepted(
                account=self.account,
                api_version=self.version,
                path=self.path,
                batch_id=self.batch_id,
                received_ms=self.received_ms,
                received_monotonic_ms=self.received_monotonic_ms,
                caller=row.caller,
                receiver=row.receiver,
                label_id=row.label_id,
                starts_at=row.starts_at,
                ends_at=row.ends_at,
                label_name=row.label_name,
                call_reason=row.call_reason,
            )
            for row in _rows_decoder.decode(self.rows)
        ]


class _Body(Struct):
    call_records: list[msgspec.Raw]
    """Left raw, so that each record is decoded on its own and the first bad one is named."""


class _Wire(NamedTuple):
    """How one version's records are read."""

    decoder: msgspec.json.Decoder[Any]
    names: Mapping[str, str]
    """Call-intent field → this version's wire field, where they differ."""
    fields: tuple[tuple[str, str], ...]
    """(call-intent field, wire field) for every field a record carries."""

    @classmethod
    def of(cls, record: type[WireV1 | WireV2], names: Mapping[str, str]) -> _Wire:
        # v1 names its fields as the call intent does.
        fields = tuple((name, names.get(name, name)) for name in WireV1.__struct_fields__)
        return cls(msgspec.json.Decoder(record), names, fields)

    def to_intent(self, record: WireV1 | WireV2) -> CallIntent:
        intent: dict[str, Any] = {}
        for name, wire_name in self.fields:
            value = getattr(record, wire_name)
            intent[name] = None if value is UNSET else value
        return CallIntent(**intent)


_WIRE: dict[Version, _Wire] = {
    "v1": _Wire.of(WireV1, {}),
    "v2": _Wire.of(
        WireV2,
        {
            "caller": "caller_number",
            "receiver": "receiver_number",
            "label_name": "dynamic_label_name",
            "call_reason": "dynamic_call_reason",
        },
    ),
}

_body_decoder = msgspec.json.Decoder(_Body)
_intent_encoder = msgspec.json.Encoder()
_FIELD_IN_ERROR = re.compile(r"missing required field `(\w+)`|- at `\$\.(\w+)")


def _refuse(status: int, field: str, message: str) -> Refusal:
    return Refusal(status, {"field": field, "message": message, "status": status})


def check_batch(
    body: bytes,
    *,
    account: str,
    version: Version,
    labels: frozenset[str] | None,
    now_ms: int,
    received_ms: int,
    received_monotonic_ms: float,
) -> Batch | Refusal:
    """The batch to store, or why it is refused: 400, or 413 for more than ``MAX_RECORDS``.

    ``labels`` are the account's known label ids; None accepts any. ``now_ms`` is the sandbox
    clock's wall time, for the expiry rule; ``received_*`` are kept with the batch.
    """
    try:
        records = _body_decoder.decode(body)
    except msgspec.DecodeError as exc:
        return Refusal(400, {"slug": "bad_request", "message": f"the body is not a batch: {exc}"})
    if not records.call_records:
        return _refuse(400, "call_records", "call_records holds no records")
    if len(records.call_records) > MAX_RECORDS:
        count = len(records.call_records)
        return _refuse(413, "call_records", f"{count} records; at most {MAX_RECORDS} a request")
    rules = _rules(account, labels)
    rows: list[_Row] = []
    for index, raw in enumerate(records.call_records):
        where = f"call_records[{index}]"
        row = _check_one(raw, _WIRE[version], rules, now_ms)
        if isinstance(row, tuple):
            name, message = row
            return _refuse(400, f"{where}.{name}" if name else where, f"{where}: {message}")
        rows.append(row)
    return Batch(
        account,
        version,
        str(uuid.uuid4()),
        received_ms,
        received_monotonic_ms,
        len(rows),
        _rows_encoder.encode(rows),
    )


def check_record(
    body: bytes,
    *,
    account: str,
    version: Version,
    labels: frozenset[str] | None,
    now_ms: int,
    received_ms: int,
    received_monotonic_ms: float,
) -> Batch | Refusal:
    """The body of the single-record endpoint: one wire record, by the rules of a batch's records.
    Accepted, it is kept as a batch of one on the ``realtime`` path; refused, the 400 names the
    field as the API does (``{"field", "message": "Request body is invalid: …", "status":
    "error"}``)."""
    row = _check_one(body, _WIRE[version], _rules(account, labels), now_ms)
    if isinstance(row, tuple):
        name, message = row
        invalid = {"field": name or "", "message": f"Request body is invalid: {message}"}
        return Refusal(400, {**invalid, "status": "error"})
    return Batch(
        account,
        version,
        "",
        received_ms,
        received_monotonic_ms,
        1,
        _rows_encoder.encode([row]),
        "realtime",
    )


def _rules(account: str, labels: frozenset[str] | None) -> Rules:
    return Rules(
        default_account=account, allowed_labels={} if labels is None else {account: labels}
    )


def _check_one(
    raw: bytes | msgspec.Raw, wire: _Wire, rules: Rules, now_ms: int
) -> _Row | tuple[str | None, str]:
    """One wire record checked as the service checks an event: its row, or the field (in the
    version's names) and why it is refused."""
    try:
        intent = wire.to_intent(wire.decoder.decode(raw))
    except msgspec.DecodeError as exc:
        found = _FIELD_IN_ERROR.search(str(exc))
        return (found and (found[1] or found[2])) or None, str(exc)
    record = validate(_intent_encoder.encode(intent), rules=rules, now_ms=now_ms)
    if isinstance(record, Rejection):
        name = record.field and wire.names.get(record.field, record.field)
        return name, f"{record.message} ({record.code})"
    return _Row(
        record.caller,
        record.receiver,
        record.label_id,
        record.starts_at,
        record.ends_at,
        record.label_name,
        record.call_reason,
    )
