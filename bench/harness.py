"""What every benchmark needs: the broker, topics full of events, child processes and their costs.

Everything measured runs in a process of its own (the service, the bare consume loop, the sink, the
sandbox), so that its time, CPU and memory are its own: CPU from ``/proc/<pid>/stat`` (all threads,
librdkafka's included), memory from ``/proc/<pid>/status`` (``VmRSS`` sampled, ``VmHWM`` the
kernel's own peak). This process only produces, watches and reads results.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import confluent_kafka
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from stream.devkafka import LocalKafka

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "bench-static-token"
PARTITIONS = 8
ACCOUNT = "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11"
LABEL = "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"
_TEXTS = (
    ("Delivery", "Your order is out for delivery"),
    ("Appointments", "Calling about your appointment tomorrow"),
    ("Card services", "Your card replacement is ready"),
    ("Support", "Follow up on your support ticket"),
)
_WINDOW_MS = 6 * 3_600_000

PRODUCER_CONFIG: dict[str, Any] = {
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "batch.num.messages": 100_000,
    "compression.type": "none",
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "acks": "all",
    "log_level": 3,
}
"""Large uncompressed batches: filling a topic takes seconds, and nothing is left for the consumer
to decompress, so the bare loop and the service both read plain bytes."""

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_WAIT_S = 600.0
"""The longest any one wait in a benchmark may take before the run is declared stuck."""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# -- the broker and topics -------------------------------------------------------------------------


@dataclass
class Kafka:
    """The broker the run uses: ``$KAFKA_BOOTSTRAP_SERVERS``, else a local one started here."""

    bootstrap_servers: str
    version: str
    kind: str
    admin: AdminClient = field(init=False)

    def __post_init__(self) -> None:
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap_servers, "log_level": 0})

    def topic(self, prefix: str, partitions: int = PARTITIONS) -> str:
        name = unique(f"bench-{prefix}")
        self.admin.create_topics([NewTopic(name, num_partitions=partitions)])[name].result(30)
        return name

    def delete(self, topics: list[str]) -> None:
        if topics:
            for future in self.admin.delete_topics(topics).values():
                with contextlib.suppress(Exception):
                    future.result(30)

    @contextlib.contextmanager
    def committed(
        self, group: str, topic: str, partitions: int = PARTITIONS
    ) -> Iterator[Callable[[], int]]:
        """A reader of the sum of ``group``'s committed positions on ``topic`` (0 where none)."""
        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap_servers, "group.id": group, "log_level": 3}
        )
        tps = [TopicPartition(topic, p) for p in range(partitions)]

        def read() -> int:
            try:
                return sum(max(0, tp.offset) for tp in consumer.committed(tps, timeout=30))
            except KafkaException:  # a fresh broker's coordinator may still be loading: ask again
                return -1

        try:
            yield read
        finally:
            consumer.close()

    def end(self, topic: str, partitions: int = PARTITIONS) -> int:
        """Sum of the topic's end offsets."""
        consumer = Consumer(
            {"bootstrap.servers": self.bootstrap_servers, "group.id": "bench", "log_level": 3}
        )
        try:
            return sum(
                consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in range(partitions)
            )
        finally:
            consumer.close()


@contextlib.contextmanager
def kafka() -> Iterator[Kafka]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield Kafka(external, "unknown (external)", "external")
        return
    with LocalKafka(heap_mb=512) as local:
        yield Kafka(local.bootstrap_servers, local.version, "local jars (stream.devkafka)")


def events(count: int) -> Iterator[tuple[bytes, bytes]]:
    """``count`` valid call intents as (key, value), ~290 bytes of JSON each, for one account:
    three callers, a unique receiver each, a label name and a call reason, a 6-hour window.

    ``starts_at`` is the wall clock when the event is made, which ``fill`` does just before it hands
    it to the producer: the produce time B3 measures latency from.
    """
    heads = [
        b'{"client_account_id":"%s","caller":"+91804000%04d","receiver":"+' % (ACCOUNT.encode(), c)
        for c in range(3)
    ]
    tails = [
        b'","label_id":"%s","label_name":"%s","call_reason":"%s","starts_at":'
        % (LABEL.encode(), name.encode(), reason.encode())
        for name, reason in _TEXTS
    ]
    for i in range(count):
        receiver = b"9198%08d" % i
        now = time.time_ns() // 1_000_000
        value = b'%s%s%s%d,"ends_at":%d}' % (
            heads[i % 3],
            receiver,
            tails[i % len(tails)],
            now,
            now + _WINDOW_MS,
        )
        yield receiver, value


def fill(
    kafka: Kafka,
    topic: str,
    count: int,
    *,
    rate: float | None = None,
    linger_ms: int | None = None,
) -> float:
    """Produce ``count`` of ``events`` to ``topic``, at most ``rate`` a second; return the seconds
    it took until Kafka acknowledged them all."""
    config = {**PRODUCER_CONFIG, "bootstrap.servers": kafka.bootstrap_servers}
    if linger_ms is not None:
        config["linger.ms"] = linger_ms
    failed = 0

    def report(error: Any, _: Any) -> None:
        nonlocal failed
        failed += error is not None

    producer = Producer({**config, "delivery.report.only.error": True, "on_delivery": report})
    produce, poll = producer.produce, producer.poll
    started = time.monotonic()
    for n, (key, value) in enumerate(events(count), 1):
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:
                poll(0.05)
        if rate is not None:
            ahead = started + n / rate - time.monotonic()
            poll(max(0.0, ahead))
        elif n % 1000 == 0:
            poll(0)
    left = producer.flush(120)
    if left or failed:
        raise RuntimeError(f"{left + failed} of {count} events were not acknowledged")
    return time.monotonic() - started


# -- child processes -------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


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


class Child:
    """A process whose output goes to a log file; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.started = time.monotonic()
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
        """The first line it printed that is not a JSON log line (the URL, for the sink and the
        sandbox, which may log its labels before it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            lines = text.split("\n")[:-1]  # whole lines only
            for line in lines:
                if not line.startswith("{"):
                    return line.strip()
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"{self.log.name}: no first line:\n{self.log.read_text()[-2000:]}")

    def alive(self) -> bool:
        """True while it runs; raises (with the log's tail) once it has exited."""
        if self.proc.poll() is None:
            return True
        raise RuntimeError(f"{self.log.name} exited with {self.proc.returncode}:\n{self._tail()}")

    def _tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def wait_until(condition: Callable[[], bool], what: str, every_s: float = 0.05) -> float:
    """Poll ``condition``; return the monotonic time it first held."""
    deadline = time.monotonic() + _WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(every_s)
    return time.monotonic()


class Sampler:
    """Samples a child's VmRSS (and reads its VmHWM) on a thread, every ``every_s``."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self._pid = pid
        self._every_s = every_s
        self.samples: list[tuple[float, int]] = []
        """(seconds since start, VmRSS KiB)."""
        self.hwm_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss, hwm = memory_kib(self._pid)
            except (FileNotFoundError, ProcessLookupError):
                return
            self.samples.append((time.monotonic() - self._started, rss))
            self.hwm_kib = max(self.hwm_kib, hwm)
            self._stop.wait(self._every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_rss_kib(self) -> int:
        return max((rss for _, rss in self.samples), default=0)


# -- the service, the sink and the sandbox ---------------------------------------------------------


class Service(Child):
    """``dcr-stream run`` with the bench's environment; JSON log lines in ``log``."""

    def __init__(self, kafka: Kafka, topic: str, api_url: str, log: Path, **env: str) -> None:
        self.group = unique("bench-group")
        super().__init__(
            [sys.executable, "-m", "stream", "run"],
            log,
            {
                "DCR_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                "DCR_KAFKA_TOPICS": topic,
                "DCR_KAFKA_GROUP_ID": self.group,
                "DCR_API_BASE_URL": api_url,
                "DCR_API_TOKEN": TOKEN,
                "DCR_HTTP_PORT": "0",
                **{f"DCR_{k.upper()}": v for k, v in env.items()},
            },
        )

    def lines(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
        return entries

    def joined(self) -> bool:
        return self.alive() and any(e["message"].startswith("assigned") for e in self.lines())

    def metrics(self) -> dict[str, float]:
        """``/metrics``, every sample summed over its labels: ``{name: value}``."""
        port = None
        for entry in self.lines():
            if found := re.search(r"on port (\d+)", entry["message"]):
                port = int(found[1])
        if port is None:
            return {}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                name = name.split("{", 1)[0]
                values[name] = values.get(name, 0.0) + float(value)
        return values


def sink(log: Path) -> tuple[Child, str]:
    child = Child([sys.executable, "-m", "bench.sink"], log)
    return child, child.first_line()


def sandbox(log: Path, *flags: str) -> tuple[Child, str]:
    """``dcr-stream sandbox`` with the bench's static token and ``flags`` (its limits)."""
    child = Child(
        [
            sys.executable, "-m", "stream", "sandbox", "--port", "0",
            "--static-token", TOKEN, *flags,
        ],
        log,
    )  # fmt: skip
    return child, child.first_line()


def http_json(url: str, body: bytes | None = None) -> Any:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())


def http_lines(url: str) -> Iterator[bytes]:
    """The lines of a (large) newline-delimited answer, as they stream in."""
    with urllib.request.urlopen(url, timeout=300) as r:
        for line in r:
            if line.strip():
                yield line


# -- where the figures came from -------------------------------------------------------------------


def machine(kafka: Kafka) -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        "kafka": kafka.version,
        "kafka_broker": kafka.kind,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
