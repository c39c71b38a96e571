"""The fault-injection suite's summary: every scenario's report, after the run (issue 10)."""

from __future__ import annotations

import pytest

from tests.faults.scenario import SOAK
from tests.faults.verifier import REPORTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not REPORTS:
        return
    terminalreporter.section(f"fault injection ({'soak' if SOAK else 'bounded'} sizes)")
    for report in sorted(REPORTS, key=lambda r: r.scenario):
        terminalreporter.write_line(report.line())
        for problem in report.problems():
            terminalreporter.write_line(f"    {problem}")
