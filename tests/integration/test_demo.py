"""``dcr-stream demo`` as a user runs it: a process that starts its own broker and sandbox, prints a
summary, and leaves nothing behind, whether it finishes or is interrupted (issue 6).

The demo starts its own Kafka (not the session's), so these tests need Java but no fixture.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

DEMO_TIMEOUT_S = 240.0
SUMMARY_LINES = (
    "summary",
    "events in",
    "delivered",
    "in batches",
    "one by one, at once",
    "dead-lettered",
    "replayed from the DLQ",
    "API requests",
    "mean batch size",
    "429 answers",
    "retries",
    "elapsed",
)


def demo(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "stream", "demo", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def started(output: str) -> tuple[list[int], list[int]]:
    """The pids and ports of what the demo says it started (the broker and the sandbox)."""
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", output)]
    ports = [int(p) for p in re.findall(r" at (?:http://)?127\.0\.0\.1:(\d+)", output)]
    assert len(pids) == len(ports) == 2, output
    return pids, ports


def assert_left_nothing(output: str) -> None:
    pids, ports = started(output)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"pid {pid} outlived the demo"
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"


def wait_for_line(log: Path, text: str, proc: subprocess.Popen[bytes]) -> None:
    def printed() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")
        return text in log.read_text(errors="replace")

    wait_until(printed, timeout_s=DEMO_TIMEOUT_S, what=lambda: f"{text!r} in:\n{log.read_text()}")


def test_demo_runs_prints_the_summary_and_leaves_nothing(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    proc = demo("--events", "3000", "--accounts", "2", log=log)
    try:
        status = proc.wait(DEMO_TIMEOUT_S)
    finally:
        proc.kill()
    output = log.read_text()
    assert status == 0, output
    lines = output.splitlines()
    start = lines.index("summary")
    labels = [line.strip() for line in lines[start:]]
    for label in SUMMARY_LINES:
        assert any(line.startswith(label) for line in labels), f"no {label!r} in:\n{output}"
    assert re.search(r"^  events in +3,000 ", output, re.MULTILINE), output
    assert "every event ended where it belongs, and every offset is committed" in output
    assert "Traceback" not in output
    assert_left_nothing(output)


def test_ctrl_c_stops_everything_it_started(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    # One account (one lane of 10 requests/s): 20,000 events take seconds, so Ctrl-C lands first.
    proc = demo("--events", "20000", "--accounts", "1", log=log)
    try:
        wait_for_line(log, "running the service", proc)
        os.kill(proc.pid, signal.SIGINT)
        status = proc.wait(60)
    finally:
        proc.kill()
    output = log.read_text()
    assert status == 130, output
    assert "interrupted; everything it started is stopped" in output
    assert "Traceback" not in output
    assert_left_nothing(output)
