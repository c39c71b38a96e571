"""What every benchmark needs besides ``tests.support``: topics full of events, the costs of child
processes, the sink and the sandbox as processes, and a description of the machine.

The broker, the service process, the event generator and ``wait_until`` are the tests' own
(``tests.support``), so a benchmark runs the service exactly as the end-to-end tests do.
Everything measured runs in a process of its own (the service, the bare consume loop, the sink, the
sandbox), so that its time, CPU and memory are its own: CPU from ``/proc/<pid>/stat`` (all threads,
librdkafka's included), memory from ``/proc/<pid>/status`` (``VmRSS`` sampled, ``VmHWM`` the
kernel's own peak). This process only produces, watches and reads results.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import platform
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import confluent_kafka
import msgspec
from confluent_kafka import KafkaError, Message, Producer

from tests.support.events import ACCOUNTS, valid
from tests.support.kafka import Broker, Offsets, create_topic, produce, read_topic, unique
from tests.support.service import Child, Service, memory_kib

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = "bench-static-token"
PARTITIONS = 8
ACCOUNT = ACCOUNTS[0]
"""The one account of every benchmark's events: B2's quota is one account's."""

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
WAIT_S = 600.0
"""The longest any one wait in a benchmark may take before the run is declared stuck."""


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# -- topics ----------------------------------------------------------------------------------------


def topic(kafka: Broker, prefix: str, partitions: int = PARTITIONS) -> str:
    return create_topic(kafka.bootstrap_servers, partitions, name=unique(f"bench-{prefix}"))


def end(kafka: Broker, topic: str, partitions: int = PARTITIONS) -> int:
    """Sum of the topic's end offsets."""
    with Offsets(kafka.bootstrap_servers, "bench", topic, partitions) as offsets:
        return sum(offsets.ends(30))


def committed(offsets: Offsets) -> int:
    """Sum of a group's committed positions (0 where none)."""
    return sum(max(0, offset) for offset in offsets.committed())


class _Template:
    """``tests.support.events.valid`` for one account, a few times faster: its JSON made once with
    stand-ins for the receiver and the times, filled in per event (the same bytes, which the
    constructor checks). At 30 µs an event on a busy machine, ``valid`` alone could not keep B7's
    4,500 a second steady."""

    def __init__(self, account: str) -> None:
        stand_in = valid(0, 0, accounts=(account,)).value or b""
        self._hours_ms = 6 * 3_600_000
        text = stand_in.replace(b"%", b"%%").replace(b'"919800000000"', b'"%b"')
        text = text.replace(b'"starts_at": 0,', b'"starts_at": %d,')
        self._format = text.replace(b'"ends_at": %d' % self._hours_ms, b'"ends_at": %d')
        now_ms = time.time_ns() // 1_000_000
        made = valid(123, now_ms, accounts=(account,))
        if self._fill(b"919800000123", now_ms) != made.value:
            raise AssertionError(f"the template does not make what valid() makes: {made.value!r}")

    def _fill(self, receiver: bytes, now_ms: int) -> bytes:
        return self._format % (receiver, now_ms, now_ms + self._hours_ms)

    def event(self, i: int) -> tuple[bytes, bytes]:
        """Event ``i``'s value (starting now) and key."""
        receiver = b"9198%08d" % i
        return self._fill(receiver, time.time_ns() // 1_000_000), receiver


def fill(
    kafka: Broker,
    topic: str,
    count: int,
    *,
    rate: float | None = None,
    linger_ms: int | None = None,
    start: int = 0,
    account_of: Callable[[int], str] | None = None,
    partition_of: Callable[[int], int] | None = None,
) -> float:
    """Produce ``count`` valid events (``tests.support.events``) to ``topic``, at most ``rate`` a
    second; return the seconds it took until Kafka acknowledged them all. Events are numbered from
    ``start`` (their receivers name them); event ``i`` is for ``account_of(i)`` (default:
    ``ACCOUNT``) and goes to partition ``partition_of(i)`` (default: by its key).

    Each event's ``starts_at`` is the wall clock when it is made, just before it goes to the
    producer: the produce time B3 measures latency from."""
    config = {**PRODUCER_CONFIG, "bootstrap.servers": kafka.bootstrap_servers}
    if linger_ms is not None:
        config["linger.ms"] = linger_ms
    failed = 0

    def report(error: KafkaError | None, _: Message) -> None:
        nonlocal failed
        failed += error is not None

    producer = Producer({**config, "delivery.report.only.error": True, "on_delivery": report})
    poll = producer.poll
    templates: dict[str, _Template] = {}
    started = time.monotonic()
    for n, i in enumerate(range(start, start + count), 1):
        account = account_of(i) if account_of else ACCOUNT
        if (template := templates.get(account)) is None:
            template = templates[account] = _Template(account)
        value, key = template.event(i)
        if partition_of is None:
            produce(producer, topic, value, key)
        else:
            produce(producer, topic, value, key, partition=partition_of(i))
        if rate is not None:
            # ``poll`` returns early once it served an event (a delivery report, even unreported
            # ones): wait out the rest, or a trickle runs several times too fast.
            while (ahead := started + n / rate - time.monotonic()) > 0:
                poll(ahead)
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


def run_queue_s(pid: int) -> float:
    """Seconds a live process's threads have waited, runnable, for a CPU (the kernel's
    ``schedstat``): on a shared machine, how much it was starved."""
    waited = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
            waited += int(f.read().split()[1])
    return waited / 1e9


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


def service(kafka: Broker, topic: str, api_url: str, log: Path, **settings: str) -> Service:
    """``dcr-stream run`` with the bench's settings, in a group of its own
    (``service.settings["kafka_group_id"]``)."""
    defaults = {
        "kafka_bootstrap_servers": kafka.bootstrap_servers,
        "kafka_topics": topic,
        "kafka_group_id": unique("bench-group"),
        "api_base_url": api_url,
        "api_token": TOKEN,
        "http_port": "0",
    }
    return Service(log, **(defaults | settings))


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


class Receipt(msgspec.Struct, frozen=True):
    """An accepted record as ``/_sandbox/accepted`` lists it (the fields a benchmark reads)."""

    receiver: str
    """Names the event (``tests.support.events``)."""
    batch_id: str
    received_monotonic_ms: float


_receipts = msgspec.json.Decoder(Receipt)


def receipts(url: str, account: str | None = None) -> list[Receipt]:
    """Every record the sandbox at ``url`` accepted (of ``account``), in arrival order."""
    query = "" if account is None else f"?account={account}"
    return [_receipts.decode(line) for line in http_lines(f"{url}/_sandbox/accepted{query}")]


def deliveries(found: Sequence[Receipt]) -> tuple[Counter[str], float | None]:
    """How often each receiver was accepted (above 1: an event delivered more than once), and
    when the last event first accepted was (monotonic ms; None if none was): the end of a backlog,
    whatever was sent again after it."""
    counts = Counter(r.receiver for r in found)
    first: dict[str, float] = {}
    for r in found:
        first.setdefault(r.receiver, r.received_monotonic_ms)
    return counts, max(first.values(), default=None)


def dead_lettered(kafka: Broker, topic: str) -> Counter[str]:
    """Receiver → how often its event is in ``topic``'s dead-letter topic (the service's default,
    ``<topic>.dlq``): a dead letter keeps its original's key, the receiver."""
    letters = read_topic(kafka.bootstrap_servers, f"{topic}.dlq")
    return Counter((letter.key() or b"").decode(errors="replace") for letter in letters)


def mint_times(log: Path) -> list[float]:
    """Wall times (epoch seconds) of the tokens minted by the sandbox that writes ``log``, in
    order: each mint is a line of its log (``token minted for account …``), stamped to the ms."""
    times = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and "token minted for account" in line:
            stamp = json.loads(line)["ts"]  # 2026-12-04T05:38:08.123Z
            whole = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
            times.append(whole + int(stamp[20:23]) / 1000)
    return times


def most_in_window(times: Sequence[float], window_s: float) -> int:
    """The most of ``times`` (sorted) in any rolling ``window_s``."""
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


def readiness(port: int) -> tuple[bool, str]:
    """Whether the service at ``port`` answers ``/readyz`` with 200, and the status it gives."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
            return True, str(json.loads(r.read())["status"])
    except urllib.error.HTTPError as exc:
        return False, str(json.loads(exc.read())["status"])


# -- where the figures came from -------------------------------------------------------------------


def machine(kafka: Broker) -> dict[str, Any]:
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
