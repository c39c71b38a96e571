"""The call-intent event (docs/events.md) as it arrives, and the API's wire records (docs/api.md).

``CallIntent`` is the input contract: msgspec checks types and the constraints it can express
(`Meta`), ``stream.validation`` the rest. ``Record`` is a validated, normalised call intent; it is
mapped to the API's body by one function per API version, and a batch is one ``msgspec`` encode.
``schemas/call-intent.schema.json`` is generated from ``CallIntent`` (``schema()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

__all__ = [
    "API_VERSIONS",
    "CallIntent",
    "Record",
    "WireV1",
    "WireV2",
    "encode_batch",
    "encode_record",
    "schema",
    "to_wire_v1",
    "to_wire_v2",
]

UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

# The lengths are not redundant: Python's `$` also matches before a trailing newline.
Uuid = Annotated[
    str,
    Meta(
        min_length=36,
        max_length=36,
        pattern=UUID_PATTERN,
        description="A UUID, e.g. 6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11 (any case).",
    ),
]
Phone = Annotated[
    str,
    Meta(
        max_length=64,
        description="Phone number with country code; `+`, spaces, `-`, `(`, `)` and `.` are "
        "stripped and 8-15 digits must remain.",
    ),
]
EpochMs = Annotated[int, Meta(description="Epoch milliseconds (not seconds, not microseconds).")]


class CallIntent(Struct, frozen=True, kw_only=True):
    """One call-intent event, the value of a Kafka message. Unknown fields are ignored."""

    caller: Phone
    receiver: Phone
    label_id: Uuid
    starts_at: EpochMs
    ends_at: EpochMs
    client_account_id: Uuid | None = None
    """Optional when ``DCR_CLIENT_ACCOUNT_ID`` is set."""
    label_name: Annotated[str, Meta(min_length=1, max_length=40)] | None = None
    call_reason: (
        Annotated[
            str,
            Meta(
                min_length=10,
                max_length=100,
                description="None of ! @ # $ % ^ & * ( ) _ + / ; must not start or end with "
                "`.`, `,`, `-` or white space.",
            ),
        ]
        | None
    ) = None
    priority: Literal["high", "normal"] | None = "normal"
    """Null means ``normal``, as null means absent for the other optional fields."""


class Record(Struct, frozen=True, kw_only=True, gc=False):
    """A valid call intent, normalised: phone numbers are digits only, the account is resolved."""

    account: str
    caller: str
    receiver: str
    label_id: str
    label_name: str | None
    call_reason: str | None
    starts_at: int
    ends_at: int
    high_priority: bool


class WireV1(Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A record of a v1 request body; optional fields are omitted, never null."""

    caller: str
    receiver: str
    label_id: str
    starts_at: int
    ends_at: int
    label_name: str | UnsetType = UNSET
    call_reason: str | UnsetType = UNSET


class WireV2(Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A record of a v2 request body; optional fields are omitted, never null."""

    caller_number: str
    receiver_number: str
    label_id: str
    starts_at: int
    ends_at: int
    dynamic_label_name: str | UnsetType = UNSET
    dynamic_call_reason: str | UnsetType = UNSET


def to_wire_v1(record: Record) -> WireV1:
    """The v1 body record: ``caller``, ``receiver``, ``label_name``, ``call_reason``."""
    return WireV1(
        caller=record.caller,
        receiver=record.receiver,
        label_id=record.label_id,
        starts_at=record.starts_at,
        ends_at=record.ends_at,
        label_name=UNSET if record.label_name is None else record.label_name,
        call_reason=UNSET if record.call_reason is None else record.call_reason,
    )


def to_wire_v2(record: Record) -> WireV2:
    """The v2 body record: ``caller_number``, ``receiver_number``, ``dynamic_*``."""
    return WireV2(
        caller_number=record.caller,
        receiver_number=record.receiver,
        label_id=record.label_id,
        starts_at=record.starts_at,
        ends_at=record.ends_at,
        dynamic_label_name=UNSET if record.label_name is None else record.label_name,
        dynamic_call_reason=UNSET if record.call_reason is None else record.call_reason,
    )


API_VERSIONS = {"v1": to_wire_v1, "v2": to_wire_v2}
"""``DCR_API_VERSION`` → the function that maps a record to that version's wire record."""

_encoder = msgspec.json.Encoder()


def encode_batch(records: Sequence[Record], version: Literal["v1", "v2"]) -> bytes:
    """The request body ``{"call_records": [...]}`` for one batch, in one encode."""
    to_wire = API_VERSIONS[version]
    return _encoder.encode({"call_records": [to_wire(r) for r in records]})


def encode_record(record: Record, version: Literal["v1", "v2"]) -> bytes:
    """The body of the single-record endpoint: one wire record, with the version's field names."""
    return _encoder.encode(API_VERSIONS[version](record))


def schema() -> dict[str, Any]:
    """The JSON Schema of ``CallIntent``, as checked in under ``schemas/``."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **msgspec.json.schema(CallIntent),
    }
