"""``dcr-stream run`` as a process of its own, the way it runs in production, and what it exposes.

:class:`Child` is any process whose output goes to a log file (the benchmarks run their sink, the
sandbox and a bare consume loop that way too); :class:`Service` is the service itself, with its
JSON log lines, its HTTP port and ``/metrics``. ``service_factory`` starts services configured for
the end-to-end tests and kills whatever is still running at teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from tests.support.kafka import Broker
from tests.support.sandbox import TOKEN
from tests.support.waiting import wait_until

__all__ = [
    "RUN_TIMEOUT_S",
    "Child",
    "Service",
    "get_text",
    "memory_kib",
    "metric_names",
    "scrape",
    "service_factory",
    "total",
]

RUN_TIMEOUT_S = 120.0
"""The longest an end-to-end test's service may take to deliver, commit or join at the integration
suite's sizes (the fault scenarios have their own, ``tests/support/scenario.py``)."""


class Child:
    """A process whose output (stdout and stderr) goes to ``log``."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.started = time.monotonic()
        # The child writes to its own copy of the descriptor: ours can close at once.
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def first_line(self, timeout_s: float = 30.0) -> str:
        """The first line it printed (the URL, for the sink and the sandbox)."""

        def printed() -> bool:
            assert self.proc.poll() is None, f"{self.log.name}: no first line:\n{self._tail()}"
            return "\n" in self.log.read_text(errors="replace")

        wait_until(
            printed,
            timeout_s=timeout_s,
            interval_s=0.02,
            what=lambda: f"a first line in {self.log.name}:\n{self._tail()}",
        )
        return self.log.read_text(errors="replace").split("\n", 1)[0].strip()

    def alive(self) -> bool:
        """True while it runs; fails (with the log's tail) once it has exited."""
        assert self.proc.poll() is None, (
            f"{self.log.name} exited with {self.proc.returncode}:\n{self._tail()}"
        )
        return True

    def _tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        """Its exit status, once it has exited (``TimeoutExpired`` if it has not by then)."""
        return self.proc.wait(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, and SIGKILL if it has not exited within ``timeout_s``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


class Service(Child):
    """``dcr-stream run``; ``settings`` are its ``DCR_*`` variables, named in lower case without
    the prefix (``kafka_topics="t"`` is ``DCR_KAFKA_TOPICS=t``)."""

    def __init__(self, log: Path, **settings: str) -> None:
        self.settings = settings
        env = {f"DCR_{name.upper()}": value for name, value in settings.items()}
        super().__init__([sys.executable, "-m", "stream", "run"], log, env)

    def lines(self) -> list[dict[str, Any]]:
        """Its JSON log entries so far (the last line may still be half written: left out)."""
        entries = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
        return entries

    def joined(self) -> bool:
        """Its input consumer was assigned partitions (or none) by its group; fails if it has
        exited. The reconciler's consumer logs its own assignments (of the receipts topic) alike."""
        topics = self.settings.get("kafka_topics", "call-intents").split(",")
        return self.alive() and any(
            message == "assigned nothing" or any(f"{t.strip()}[" in message for t in topics)
            for message in (e["message"] for e in self.lines())
            if message.startswith("assigned ")
        )

    def signal(self, sig: int) -> None:
        if sig != signal.SIGKILL:
            # Before it joined, the service may not have installed its handlers yet.
            wait_until(self.joined, timeout_s=RUN_TIMEOUT_S, what="the service to join its group")
        super().signal(sig)

    def token_slots(self) -> set[int]:
        """The token slots it holds now, from its log."""
        held: set[int] = set()
        for message in (e["message"] for e in self.lines()):
            for verb in ("assigned", "revoked"):
                prefix = f"token slots {verb}: "
                if message.startswith(prefix):
                    slots = set(json.loads(message.removeprefix(prefix)))
                    held = held | slots if verb == "assigned" else held - slots
        return held

    def rss_mib(self) -> float:
        return memory_kib(self.pid)[0] / 1024

    def http_port(self, timeout_s: float = 60.0) -> int:
        """The port of ``/metrics``, ``/healthz`` and ``/readyz``, once it logged it."""
        ports: list[int] = []

        def logged() -> bool:
            ports.extend(
                int(found[1])
                for e in self.lines()
                if (found := re.search(r"on port (\d+)$", e["message"]))
            )
            return bool(ports)

        wait_until(logged, timeout_s=timeout_s, what=f"{self.log.name}'s http port")
        return ports[0]

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as served now (see ``scrape``)."""
        return scrape(self.http_port())


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a live process, in KiB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def get_text(port: int, path: str) -> str:
    """The body the service's HTTP server answers ``path`` with, whatever the status."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())


def scrape(port: int) -> dict[str, float]:
    """The samples of ``/metrics``: ``name{labels}`` → value."""
    samples = {}
    for line in get_text(port, "/metrics").splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def metric_names(exposition: str) -> set[str]:
    """Every sample name a ``/metrics`` text can show, from its ``# TYPE`` lines (a family is
    declared even before it has a sample): counters with ``_total``, histograms with
    ``_bucket``/``_sum``/``_count``."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)", exposition, re.M):
        if kind == "counter":
            names |= {name, f"{name}_total"}
        elif kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def total(samples: dict[str, float], name: str, default: float = 0.0) -> float:
    """The sum of ``name``'s samples over all their labels; ``default`` when there is none."""
    found = [v for k, v in samples.items() if k == name or k.startswith(name + "{")]
    return sum(found) if found else default


_FAST = {
    "rate_limit_rps": "200",
    # The fast sandbox has no per-token limit: nor has the service (one static token).
    "token_requests_per_minute": "1000000",
    "batch_linger_ms": "100",
    "retry_base_ms": "50",
    "retry_cap_ms": "1000",
}
"""The paces and waits the service is given against ``sandbox_thread``'s fast sandbox (1000
requests a second, no per-token limit), so that a test waits for the pipeline, not for a linger
or a backoff sized for the real API."""


@pytest.fixture
def service_factory(kafka: Broker, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """``service_factory(api_url, topic, group, documented=False, **settings)`` starts one service
    process, against the session broker unless ``kafka_bootstrap_servers`` says otherwise; killed
    at teardown. ``documented=True`` leaves the service's own paces and waits (those of the API's
    documented limits) instead of the fast ones."""
    started: list[Service] = []

    def start(
        api_url: str, topic: str, group: str, *, documented: bool = False, **settings: str
    ) -> Service:
        defaults = {
            "kafka_bootstrap_servers": kafka.bootstrap_servers,
            "kafka_topics": topic,
            "kafka_group_id": group,
            "api_base_url": api_url,
            "api_token": TOKEN,
            "commit_interval_ms": "200",
            "http_port": "0",
        } | ({} if documented else _FAST)
        service = Service(tmp_path / f"service-{len(started)}.log", **(defaults | settings))
        started.append(service)
        return service

    yield start
    for service in started:
        service.kill()
