"""The finisher's own decisions, without a broker: how a probe's answer is read
(docs/design.md#labels)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stream.batching import Pending
from stream.events import Record
from stream.finishing import Finisher
from stream.validation import Rejection
from stream.wire import Response

RECORD = Record(
    account="6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11",
    caller="918040001000",
    receiver="919800000001",
    label_id="0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a",
    label_name=None,
    call_reason=None,
    starts_at=0,
    ends_at=1,
    high_priority=False,
)


class _Finisher:
    """What ``Finisher.probe`` uses: a delivery that answers ``answer``, and the dead letters."""

    def __init__(self, answer: Response) -> None:
        self.delivery = SimpleNamespace(probe=self._send)
        self.answer = answer
        self.letters: list[tuple[str, int | None]] = []

    async def _send(self, item: Pending[str]) -> Response:
        return self.answer

    async def write_dead_letter(
        self, source: str, rejection: Rejection, status: int | None, body: bytes | None
    ) -> None:
        self.letters.append((rejection.code, status))


async def probe(answer: Response) -> tuple[str, list[tuple[str, int | None]]]:
    finisher = _Finisher(answer)
    outcome = await Finisher.probe(finisher, Pending(RECORD, "source"))  # type: ignore[arg-type]
    return outcome, finisher.letters


@pytest.mark.parametrize(
    "body",
    [
        b'{"field": "call_records[0].label_id", "message": "not a dynamic label", "status": 400}',
        b'{"field": "label_id", "message": "Request body is invalid: ...", "status": "error"}',
    ],
)
async def test_a_refusal_whose_field_is_the_label_id_refuses_the_label(body: bytes) -> None:
    assert await probe(Response(400, body)) == ("label_refused", [("unknown_label", 400)])


@pytest.mark.parametrize(
    "body",
    [
        b'{"field": "call_records[0].ends_at", "message": "ends_at is before the label", '
        b'"status": 400}',
        b'{"slug": "bad_request", "message": "the label_id of this record is fine, the rest not"}',
        b"label",
    ],
)
async def test_a_refusal_that_only_mentions_a_label_refuses_the_record(body: bytes) -> None:
    assert await probe(Response(400, body)) == ("record_refused", [("api_rejected", 400)])


async def test_an_accepted_probe_confirms_the_label() -> None:
    assert await probe(Response(200, b"{}")) == ("accepted", [])
