"""``dcr-stream replay`` without a broker: a dead letter written cut is listed, never sent
(docs/dlq.md#replay). The round trip through a real broker is in
``tests/integration/test_produce_replay.py``."""

from __future__ import annotations

import io
from typing import Any

from confluent_kafka import Message, Producer

from stream.tools.replay import Letter, Replayed, Selection, _pass_on

ORIGINAL_HEADERS: list[tuple[str, str | bytes | None]] = [("trace-id", b"abc")]
OURS: list[tuple[str, str | bytes | None]] = [
    ("dcr.error.code", b"message_too_large"),
    ("dcr.error.stage", b"decode"),
    ("dcr.source.topic", b"call-intents"),
    ("dcr.source.partition", b"2"),
    ("dcr.source.offset", b"41"),
]
CUT: list[tuple[str, str | bytes | None]] = [
    ("dcr.error.truncated", b"value"),
    ("dcr.original.size", b"1040000"),
]


def letter(*, cut: bool) -> Letter:
    headers = [*ORIGINAL_HEADERS, *OURS, *(CUT if cut else [])]
    return Letter.of(
        Message(topic="call-intents.dlq", partition=0, offset=7, value=b"{", headers=headers)
    )


def test_the_cut_headers_are_ours_and_stripped() -> None:
    read = letter(cut=True)
    assert read.headers == ORIGINAL_HEADERS
    assert read.truncated == "value"
    assert letter(cut=False).truncated == ""


class _Recording(Producer):
    """A producer that records what it is asked to produce and sends nothing. (``len()`` of a real
    one also counts its queued events, such as a refused connection's error: not a count of
    messages.)"""

    def __init__(self) -> None:
        super().__init__({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})
        self.topics: list[str] = []

    def produce(self, topic: str, *args: Any, **kwargs: Any) -> None:
        self.topics.append(topic)


def test_a_cut_letter_is_listed_and_never_sent() -> None:
    producer = _Recording()
    out, result = io.StringIO(), Replayed()
    _pass_on(letter(cut=True), Selection(), None, producer, out, result)
    assert (result.selected, result.truncated) == (1, 1)
    assert producer.topics == []
    assert (
        out.getvalue() == "call-intents[2]@41 message_too_large decode cut (value): not replayed\n"
    )
    _pass_on(letter(cut=False), Selection(), None, producer, out, result)
    assert (result.selected, result.truncated) == (2, 1)
    assert producer.topics == ["call-intents"]
