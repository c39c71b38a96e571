"""The commands' argument types: the service's own rules, with their messages, through argparse."""

from __future__ import annotations

import argparse

import pytest

from stream.settings import parse_positive, parse_uuid
from stream.tools.args import arg_type, at_least_one


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tool", exit_on_error=False)
    parser.add_argument("--rate", type=arg_type(parse_positive))
    parser.add_argument("--label-id", type=arg_type(parse_uuid))
    parser.add_argument("--count", type=at_least_one)
    return parser


def test_good_values_pass_through_the_service_rules() -> None:
    args = parser().parse_args(
        ["--rate", "2.5", "--label-id", " 0B5E7C52-8A3F-4E57-B0A1-3F7C9D2E4B6A", "--count", "3"]
    )
    assert (args.rate, args.label_id, args.count) == (
        2.5,
        "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a",
        3,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rate", "0"], "argument --rate: 0 must be a positive number"),
        (["--rate", "inf"], "argument --rate: inf must be a positive number"),
        (["--label-id", "nope"], "argument --label-id: 'nope' is not a UUID"),
        (["--count", "0"], "argument --count: 0 is less than 1"),
        (["--count", "x"], "argument --count: 'x' is not a whole number"),
    ],
)
def test_a_bad_value_shows_the_rule_s_own_message(argv: list[str], message: str) -> None:
    with pytest.raises(argparse.ArgumentError) as error:
        parser().parse_args(argv)
    assert str(error.value) == message
