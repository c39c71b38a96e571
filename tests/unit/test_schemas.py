"""``schemas/`` never drifts from the code (docs/events.md).

``call-intent.schema.json`` is ``stream.events.schema()`` rendered by ``render``; ``asyncapi.yaml``
is written by hand and checked here against the names it must share with the code. Regenerate the
schema with ``scripts/gen-schemas`` (which runs this module).
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import msgspec

from stream import dlq
from stream.events import CallIntent, schema
from stream.validation import CODES

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
CALL_INTENT = SCHEMAS / "call-intent.schema.json"
ASYNCAPI = SCHEMAS / "asyncapi.yaml"

DRAFT_07_ALIKE = {
    "$schema",
    "$ref",
    "$defs",
    "title",
    "description",
    "type",
    "properties",
    "required",
    "anyOf",
    "enum",
    "default",
    "pattern",
    "minLength",
    "maxLength",
}
"""Keywords that JSON Schema 2020-12 and draft-07 (AsyncAPI's default schema format) read alike;
``$defs`` is only a place that ``$ref`` points into, which draft-07 resolves all the same."""


def render() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_the_checked_in_schema_is_the_code() -> None:
    assert CALL_INTENT.read_text(encoding="utf-8") == render(), (
        "schemas/call-intent.schema.json drifted from stream/events.py: run scripts/gen-schemas"
    )


def test_the_schema_reads_the_same_as_draft_07() -> None:
    def keywords(node: dict[str, Any]) -> set[str]:
        found = set(node)
        for sub in [*node.get("properties", {}).values(), *node.get("$defs", {}).values()]:
            found |= keywords(sub)
        for sub in node.get("anyOf", []):
            found |= keywords(sub)
        return found

    assert keywords(schema()) <= DRAFT_07_ALIKE


def block(text: str, key: str) -> str:
    """The lines under ``key:`` in a YAML text, dedented: a stand-in for a YAML parser, which
    is not a dependency, good enough for the block style this file is written in."""
    match = re.search(rf"^( *){re.escape(key)}:\n((?:\1 +\S.*\n)+)", text, re.MULTILINE)
    assert match, f"no {key} in {ASYNCAPI.name}"
    return textwrap.dedent(match[2])


def items(text: str) -> list[str]:
    return re.findall(r"^ *- ['\"]?([^'\"\n]*)['\"]?$", text, re.MULTILINE)


def test_asyncapi_names_every_dead_letter_header() -> None:
    headers = block(block(ASYNCAPI.read_text(encoding="utf-8"), "deadLetterHeaders"), "properties")
    assert re.findall(r"^(\S+):$", headers, re.MULTILINE) == list(dlq.HEADERS)


def test_asyncapi_lists_every_code_stage_and_field() -> None:
    text = ASYNCAPI.read_text(encoding="utf-8")
    headers = block(block(text, "deadLetterHeaders"), "properties")
    assert items(block(block(headers, dlq.ERROR_CODE), "enum")) == list(CODES)
    assert items(block(block(headers, dlq.ERROR_STAGE), "enum")) == [
        "decode",
        "validate",
        "expired",
        "api",
        "status",
    ]
    fields = items(block(block(headers, dlq.ERROR_FIELD), "enum"))
    assert fields == ["", *(f.name for f in msgspec.structs.fields(CallIntent))]


def test_asyncapi_refers_to_the_generated_schema() -> None:
    refs = re.findall(r"\$ref: '\./([^']+)'", ASYNCAPI.read_text(encoding="utf-8"))
    assert refs == [CALL_INTENT.name]


if __name__ == "__main__":
    CALL_INTENT.write_text(render(), encoding="utf-8")
    print(f"wrote {CALL_INTENT}")
