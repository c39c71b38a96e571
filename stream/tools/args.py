"""What the commands' parsers share: argument types that apply the service's own rules (its parsers
raise ``ValueError`` with a message worth showing), and the exit status of bad usage."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

__all__ = ["EXIT_USAGE", "arg_type", "at_least_one"]

T = TypeVar("T")

EXIT_USAGE = 2
"""Bad flags or configuration: argparse's own code, and the exit status docs/configuration.md
gives a bad value."""


def arg_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse ``type``: argparse shows the message of its ``ValueError``
    (``argument --rate: 0 must be a positive number``) instead of a bare ``invalid value``."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _at_least_one(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if number < 1:
        raise ValueError(f"{text} is less than 1")
    return number


at_least_one = arg_type(_at_least_one)
"""A count: a whole number of at least 1."""
