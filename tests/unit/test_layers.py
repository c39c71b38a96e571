"""The service's layers hold (tests/support/layers.py, docs/README.md#layers)."""

from __future__ import annotations

from tests.support import layers


def test_the_service_imports_no_cycle() -> None:
    assert layers.cycles(layers.graph(layers.modules())) == []


def test_a_cycle_is_found() -> None:
    edges = {"api": {"tokens"}, "tokens": {"pacing"}, "pacing": {"api"}, "app": {"api"}}
    assert layers.cycles(edges) == [["api", "pacing", "tokens"]]


def test_every_layer_rule_holds() -> None:
    assert layers.problems() == []
