"""The API's wire records (docs/api.md): names per version, optional fields omitted, one encode."""

from __future__ import annotations

import json
from typing import Any, Literal

import msgspec
import pytest

import stream.events
from stream.events import API_VERSIONS, Record, WireV1, WireV2, encode_batch, to_wire_v1, to_wire_v2

NOW = 4_102_444_800_000


def record(i: int = 0, **changes: Any) -> Record:
    fields: dict[str, Any] = {
        "account": "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11",
        "caller": "918040001000",
        "receiver": f"9198{i:08d}",
        "label_id": "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a",
        "label_name": "Acme Deliveries",
        "call_reason": "Your parcel is on its way",
        "starts_at": NOW + i,
        "ends_at": NOW + i + 3_600_000,
        "high_priority": False,
    }
    return Record(**{**fields, **changes})


def test_v1_names_every_field_as_the_v1_docs_do() -> None:
    assert json.loads(msgspec.json.encode(to_wire_v1(record()))) == {
        "caller": "918040001000",
        "receiver": "919800000000",
        "label_id": "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a",
        "label_name": "Acme Deliveries",
        "call_reason": "Your parcel is on its way",
        "starts_at": NOW,
        "ends_at": NOW + 3_600_000,
    }


def test_v2_names_every_field_as_the_v2_docs_do() -> None:
    assert json.loads(msgspec.json.encode(to_wire_v2(record()))) == {
        "caller_number": "918040001000",
        "receiver_number": "919800000000",
        "label_id": "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a",
        "dynamic_label_name": "Acme Deliveries",
        "dynamic_call_reason": "Your parcel is on its way",
        "starts_at": NOW,
        "ends_at": NOW + 3_600_000,
    }


@pytest.mark.parametrize(
    ("version", "optional"),
    [("v1", {"label_name", "call_reason"}), ("v2", {"dynamic_label_name", "dynamic_call_reason"})],
)
def test_optional_fields_are_omitted_not_null(version: str, optional: set[str]) -> None:
    wire = API_VERSIONS[version](record(label_name=None, call_reason=None))
    encoded = msgspec.json.encode(wire)
    assert b"null" not in encoded
    assert optional.isdisjoint(json.loads(encoded))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_one_optional_field_alone(version: Literal["v1", "v2"]) -> None:
    body = json.loads(encode_batch([record(call_reason=None)], version))
    (wire,) = body["call_records"]
    assert "Acme Deliveries" in wire.values()
    assert "Your parcel is on its way" not in wire.values()
    assert None not in wire.values()


def test_api_versions_are_v1_and_v2() -> None:
    assert {"v1": to_wire_v1, "v2": to_wire_v2} == API_VERSIONS


@pytest.mark.parametrize(("version", "wire_type"), [("v1", WireV1), ("v2", WireV2)])
def test_a_batch_of_500_is_one_encode_that_round_trips(
    version: Literal["v1", "v2"],
    wire_type: type[WireV1 | WireV2],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = [record(i, label_name=None if i % 3 else f"Label {i}") for i in range(500)]
    encodes: list[object] = []
    encoder = stream.events._encoder

    class Counting:
        def encode(self, obj: object) -> bytes:
            encodes.append(obj)
            return encoder.encode(obj)

    monkeypatch.setattr(stream.events, "_encoder", Counting())

    body = encode_batch(records, version)

    assert len(encodes) == 1
    assert list(json.loads(body)) == ["call_records"]
    # mypy takes no type held in a variable; msgspec takes it at run time.
    decoded = msgspec.json.decode(body, type=dict[str, list[wire_type]])  # type: ignore[valid-type]
    assert decoded == {"call_records": [API_VERSIONS[version](r) for r in records]}


def test_non_ascii_text_is_sent_as_utf8() -> None:
    body = encode_batch([record(label_name="Café Zürich 📞")], "v2")
    assert "Café Zürich 📞".encode() in body
    assert json.loads(body)["call_records"][0]["dynamic_label_name"] == "Café Zürich 📞"
