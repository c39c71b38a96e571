"""Lines for the terminal summary, from whichever process ran the test.

The suite runs in parallel (pytest-xdist, ``scripts/test``): each worker is a pytest session of its
own, with its own broker, and only the controller writes the terminal summary. So what a test or a
fixture wants said at the end (the broker it ran against, a fault scenario's report) goes through
``note``: a worker hands its notes to the controller when it finishes (``workeroutput``), and the
controller prints every note once, by section, after the run. Without xdist (``-n 0``), the one
session prints its own.
"""

from __future__ import annotations

from typing import Any

import pytest

__all__ = ["note"]

_KEY = "dcr_summary"
_notes: list[tuple[str, str]] = []
"""(section, line), in the order noted; on the controller, the workers' too."""


def note(section: str, line: str) -> None:
    """Say ``line`` under ``section`` in the terminal summary."""
    _notes.append((section, line))


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput: dict[str, Any] | None = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller prints
        workeroutput[_KEY] = list(_notes)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist, on the controller: a worker finished; keep its notes."""
    workeroutput: dict[str, Any] = getattr(node, "workeroutput", {})
    _notes.extend((section, line) for section, line in workeroutput.get(_KEY, []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if getattr(terminalreporter.config, "workeroutput", None) is not None:
        return
    sections: dict[str, list[str]] = {}
    for section, line in _notes:
        sections.setdefault(section, []).append(line)
    for section, lines in sections.items():
        terminalreporter.section(section)
        for line in lines:
            terminalreporter.write_line(line)
