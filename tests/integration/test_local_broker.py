"""The local jar broker never outlives the Python process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

_STARTER = """
import sys, time
from stream.devkafka import LocalKafka
broker = LocalKafka(heap_mb=256)
broker.start()
print(broker.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; it has no /proc/PID/cmdline content.
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return bool(f.read())


def test_jvm_dies_when_its_starter_is_killed() -> None:
    # As a context manager, Popen closes the pipe and waits for the starter on the way out.
    with subprocess.Popen(
        [sys.executable, "-c", _STARTER], stdout=subprocess.PIPE, text=True
    ) as starter:
        assert starter.stdout is not None
        jvm_pid = int(starter.stdout.readline())
        assert _alive(jvm_pid)
        starter.send_signal(signal.SIGKILL)
    wait_until(lambda: not _alive(jvm_pid), timeout_s=30, what=f"JVM {jvm_pid} to die with it")
