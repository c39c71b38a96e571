"""values.yaml, values.schema.json and the chart's README name the same values."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.support.helm import CHART

pytestmark = pytest.mark.chart

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
README = (CHART / "README.md").read_text()


def _leaves(schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of the values the schema describes; an object without properties is a leaf."""
    properties = schema.get("properties")
    if not properties:
        return {prefix}
    return set().union(
        *(_leaves(sub, f"{prefix}.{name}" if prefix else name) for name, sub in properties.items())
    )


def _value_paths(values: Any, schema: dict[str, Any], prefix: str = "") -> set[str]:
    properties = schema.get("properties")
    if not properties:
        return {prefix}
    assert isinstance(values, dict), prefix
    return set().union(
        *(
            _value_paths(value, properties.get(name, {}), f"{prefix}.{name}" if prefix else name)
            for name, value in values.items()
        )
    )


LEAVES = _leaves(SCHEMA) - {"global"}  # Helm's own, for subcharts


def test_values_yaml_sets_every_value_the_schema_knows() -> None:
    assert _value_paths(VALUES, SCHEMA) == LEAVES


def test_the_readme_documents_every_value() -> None:
    table = README.split("## Values", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", table, re.MULTILINE))
    assert documented == LEAVES
