"""Hostile messages for scenario 7: random bytes, invalid UTF-8, deep nesting, huge strings and
more, each refused by the service's validator with the code ``expected_code`` gives it.

Every one is an ``Event`` (``tests.support.events``) with an id of its own, which the ``Ledger``
puts in a header the dead-letter topic keeps: a dead letter names its original even when the value
is random bytes or a tombstone.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from stream.validation import CODES
from tests.support.events import Event, expected_code, intent

__all__ = ["HOSTILE_KINDS", "hostile"]


def _json_with(i: int, now_ms: int, **changes: object) -> bytes:
    return json.dumps({**intent(i, now_ms), **changes}).encode()


def _random_bytes(rng: random.Random, i: int, now_ms: int) -> bytes | None:
    return rng.randbytes(rng.randint(1, 2_000))


def _invalid_utf8(rng: random.Random, i: int, now_ms: int) -> bytes | None:
    bad = rng.choice([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"])
    field = rng.choice(["caller", "receiver", "call_reason", "label_name", "unknown"])
    return _json_with(i, now_ms, **{field: "@@"}).replace(b"@@", bad)


def _deep_nesting(rng: random.Random, i: int, now_ms: int) -> bytes | None:
    depth = rng.randint(1_000, 20_000)
    nested = "[" * depth + "]" * depth
    shape = rng.randrange(3)
    if shape == 0:
        return ('{"a":' * depth + "1" + "}" * depth).encode()
    if shape == 1:  # in a field the service reads
        return _json_with(i, now_ms, caller=None).replace(b"null", nested.encode())
    return _json_with(i, now_ms, ignored=None).replace(b"null", nested.encode())


def _huge_string(rng: random.Random, i: int, now_ms: int) -> bytes | None:
    size = rng.randint(1_000, 60_000)
    field = rng.choice(["caller", "receiver", "call_reason", "label_name", "label_id"])
    return _json_with(i, now_ms, **{field: "9" * size})


def _out_of_range(rng: random.Random, i: int, now_ms: int) -> bytes | None:
    number = rng.choice([10**25, -(10**18), 2**63, -1, 0, 10**400])
    field = rng.choice(["starts_at", "ends_at"])
    return _json_with(i, now_ms, **{field: 0}).replace(
        f'"{field}": 0'.encode(), f'"{field}": {number}'.encode()
    )


def _duplicate_keys(rng: random.Random, i: int, now_ms: int) -> bytes | None:
    # Both copies are invalid, whichever one the decoder keeps.
    field, first, last = rng.choice(
        [("caller", '"12"', '"abc"'), ("starts_at", '"x"', "5"), ("label_id", "1", '"nope"')]
    )
    body = _json_with(i, now_ms)
    return body[:-1] + f', "{field}": {first}, "{field}": {last}}}'.encode()


def _wrong_type(rng: random.Random, i: int, now_ms: int) -> bytes | None:
    field, value = rng.choice(
        [
            ("caller", 919800000000),
            ("receiver", ["9198"]),
            ("label_id", 5),
            ("starts_at", str(now_ms)),
            ("ends_at", True),
            ("priority", 1),
            ("call_reason", {"text": "Your order is out"}),
            ("client_account_id", {}),
            ("label_name", 3.5),
        ]
    )
    return _json_with(i, now_ms, **{field: value})


def _not_an_object(rng: random.Random, i: int, now_ms: int) -> bytes | None:
    return rng.choice(
        [
            json.dumps([intent(i, now_ms)]).encode(),
            b"[]",
            b'"a string"',
            b"42",
            b"true",
            b"null",
        ]
    )


def _nulls(rng: random.Random, i: int, now_ms: int) -> bytes | None:
    choice = rng.randrange(4)
    if choice == 0:
        return None  # a tombstone
    if choice == 1:
        return b""
    field = rng.choice(["caller", "receiver", "label_id", "starts_at", "ends_at"])
    return _json_with(i, now_ms, **{field: None})


def _oversize(rng: random.Random, i: int, now_ms: int) -> bytes | None:
    # A valid event padded past the 64 KiB default: refused for its size alone.
    return _json_with(i, now_ms, padding="x" * rng.randint(65_536, 80_000))


def _malformed(rng: random.Random, i: int, now_ms: int) -> bytes | None:
    body = _json_with(i, now_ms)
    return rng.choice(
        [
            body[: rng.randint(1, len(body) - 1)],  # truncated
            body + b"xyz",  # trailing garbage
            b"\xef\xbb\xbf" + body,  # a byte-order mark
            body.replace(str(now_ms).encode(), b"NaN", 1),
            body.replace(b'"caller"', b"caller", 1),  # an unquoted key
            b"   ",
        ]
    )


HOSTILE_KINDS: dict[str, tuple[int, Callable[[random.Random, int, int], bytes | None]]] = {
    "random_bytes": (12, _random_bytes),
    "invalid_utf8": (12, _invalid_utf8),
    "deep_nesting": (6, _deep_nesting),
    "huge_string": (6, _huge_string),
    "out_of_range": (10, _out_of_range),
    "duplicate_keys": (10, _duplicate_keys),
    "wrong_type": (14, _wrong_type),
    "not_an_object": (10, _not_an_object),
    "null_or_tombstone": (10, _nulls),
    "oversize": (2, _oversize),
    "malformed_json": (8, _malformed),
}
"""Kind → (weight, maker). Big ones are rare so that a run's bytes stay modest."""


def hostile(i: int, now_ms: int, rng: random.Random) -> tuple[str, Event]:
    """A hostile message of a weighted random kind; every one of them the validator refuses."""
    kinds = list(HOSTILE_KINDS)
    kind = rng.choices(kinds, weights=[HOSTILE_KINDS[k][0] for k in kinds])[0]
    value = HOSTILE_KINDS[kind][1](rng, i, now_ms)
    code = expected_code(value, now_ms)
    assert code is not None, f"a hostile {kind} message is valid: {value!r:.200}"
    assert code in CODES, code
    key = rng.choice([None, f"hostile-{i}".encode(), rng.randbytes(8)])
    return kind, Event(f"hostile-{i}", value, code, key)
