"""``Secret``: tokens and keys, held so that no log line, repr or exception text shows them
(docs/configuration.md#secrets)."""

from __future__ import annotations

__all__ = ["Secret"]


class Secret:
    """A string that never shows itself in logs, reprs or exception text."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)
