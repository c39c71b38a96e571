"""The status line the tools (``produce``, ``replay``, ``demo``) keep on stderr while they work."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """One status line on stderr: redrawn in place on a terminal; elsewhere printed as a new
    line every ``plain_every_s`` seconds, or never when that is None."""

    def __init__(self, out: TextIO | None = None, *, plain_every_s: float | None = None) -> None:
        self._out = out or sys.stderr
        self._tty = self._out.isatty()
        self._every_s = 0.2 if self._tty else plain_every_s
        self._next = time.monotonic() + (self._every_s or 0.0)
        self._shown = 0

    def update(self, render: Callable[[], str]) -> None:
        """Show ``render()`` if a line is due; cheap enough to call per event."""
        if self._every_s is None or time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self._every_s
        text = render()
        if self._tty:
            self._out.write("\r" + text.ljust(self._shown))
            self._shown = len(text)
        else:
            self._out.write(text + "\n")
        self._out.flush()

    def close(self) -> None:
        """Clear the line on a terminal, so what is printed next starts on a clean one."""
        if self._shown:
            self._out.write("\r" + " " * self._shown + "\r")
            self._out.flush()
            self._shown = 0
