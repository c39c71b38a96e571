"""Support for end-to-end tests: the sandbox on its own loop, events with ids, the service as a
process, and reading back what Kafka committed and dead-lettered."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.sandbox import Sandbox, SandboxConfig
from tests.conftest import Broker, unique

T = TypeVar("T")

ACCOUNTS = ("6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11", "7f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a12")
LABEL = "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"
TOKEN = "integration-static-token"
DEADLINE_S = 120.0

# Invalid events, one per kind, each with the code it must be dead-lettered with.
INVALID: tuple[tuple[str, Callable[[dict[str, Any]], bytes]], ...] = (
    ("invalid_phone", lambda e: json.dumps({**e, "caller": "12"}).encode()),
    (
        "timestamp_seconds",
        lambda e: json.dumps({**e, "starts_at": e["starts_at"] // 1000}).encode(),
    ),
    ("not_json", lambda e: b"{not json"),
    (
        "missing_field",
        lambda e: json.dumps({k: v for k, v in e.items() if k != "label_id"}).encode(),
    ),
    (
        "call_reason_characters",
        lambda e: json.dumps({**e, "call_reason": "50% off today!"}).encode(),
    ),
)


def wait_for(condition: Callable[[], bool], deadline_s: float = DEADLINE_S, what: str = "") -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.1)


class SandboxThread:
    """A ``Sandbox`` served from its own event loop in a thread, so that blocking test code (and
    service processes) can talk to it while the test reads its record directly."""

    def __init__(self, config: SandboxConfig) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.sandbox = Sandbox(config)
        self.url = self.call(self.sandbox.start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def run(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the sandbox's loop (its state is the loop's)."""

        async def wrapper() -> T:
            return fn()

        return self.call(wrapper())

    def accepted_receivers(self) -> Counter[str]:
        return Counter(r.receiver for r in self.run(self.sandbox.accepted))

    def stop(self) -> None:
        self.call(self.sandbox.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def sandbox_thread() -> Iterator[Callable[..., SandboxThread]]:
    started: list[SandboxThread] = []

    def start(**config: Any) -> SandboxThread:
        server = SandboxThread(SandboxConfig(static_token=TOKEN, rate_limit_rps=1000, **config))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@dataclass
class Produced:
    """What a test produced: receivers of valid events, and the expected code of invalid ones."""

    valid: set[str] = field(default_factory=set)
    invalid: dict[tuple[int, int], str] = field(default_factory=dict)
    """(partition, offset) → expected code."""


def produce_events(
    kafka: Broker, topic: str, count: int, *, invalid_every: int = 0, start: int = 0
) -> Produced:
    """``count`` events; every ``invalid_every``-th is invalid (cycling through INVALID). Valid
    events carry a unique receiver number, which is how the sandbox's record identifies them."""
    producer = Producer(
        {"bootstrap.servers": kafka.bootstrap_servers, "linger.ms": 50, "batch.size": 1_000_000}
    )
    produced = Produced()
    now = int(time.time() * 1000)

    def on_delivery(error: Any, message: Any) -> None:
        assert error is None, error
        code = message.headers() and dict(message.headers()).get("expect")
        if code:
            produced.invalid[(message.partition(), message.offset())] = code.decode()

    for i in range(start, start + count):
        receiver = f"9198{i:08d}"
        event = {
            "client_account_id": ACCOUNTS[i % len(ACCOUNTS)],
            "caller": "+91 80 4000 1000",
            "receiver": receiver,
            "label_id": LABEL,
            "call_reason": "Your order is out for delivery",
            "starts_at": now,
            "ends_at": now + 6 * 3_600_000,
        }
        if invalid_every and i % invalid_every == 0:
            code, make = INVALID[(i // invalid_every) % len(INVALID)]
            value, headers = make(event), [("expect", code.encode())]
        else:
            value, headers = json.dumps(event).encode(), None
            produced.valid.add(receiver)
        while True:
            try:
                producer.produce(
                    topic,
                    key=receiver.encode(),
                    value=value,
                    headers=headers,
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    assert producer.flush(60) == 0
    return produced


def committed_and_end(
    kafka: Broker, group: str, topic: str, partitions: int
) -> tuple[list[int], list[int]]:
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = [tp.offset for tp in consumer.committed(tps, timeout=30)]
        ends = [consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in tps]
    finally:
        consumer.close()
    return committed, ends


def all_committed(kafka: Broker, group: str, topic: str, partitions: int) -> Callable[[], bool]:
    """A condition for ``wait_for``: the group's committed offsets are the end offsets."""

    def check() -> bool:
        committed, ends = committed_and_end(kafka, group, topic, partitions)
        return committed == ends

    return check


def read_dlq(kafka: Broker, topic: str, expected: int) -> list[Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": unique("dlq-reader"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages: list[Any] = []
    end = time.monotonic() + 60
    try:
        while len(messages) < expected and time.monotonic() < end:
            messages += [m for m in consumer.consume(1000, 0.5) if m.error() is None]
        # Anything beyond what we expect would be a duplicate: look a little longer for it.
        messages += [m for m in consumer.consume(1000, 1.0) if m.error() is None]
    finally:
        consumer.close()
    return messages


class Service:
    """``dcr-stream run`` as a child process, its JSON log in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream", "run"],
            env={**os.environ, **env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def signal(self, sig: int) -> None:
        if sig != signal.SIGKILL:
            # Before it joined, the service may not have installed its handlers yet.
            wait_for(self.joined, what="the service to join its group")
        self.proc.send_signal(sig)

    def joined(self) -> bool:
        return any(e["message"].startswith("assigned") for e in self.lines())

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def lines(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                entries.append(json.loads(line))
        return entries

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._out.close()


@pytest.fixture
def service_factory(kafka: Broker, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """``service_factory(api_url, topic, group, **DCR_overrides)`` starts one service process."""
    started: list[Service] = []

    def start(api_url: str, topic: str, group: str, **overrides: str) -> Service:
        env = {
            "DCR_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "DCR_KAFKA_TOPICS": topic,
            "DCR_KAFKA_GROUP_ID": group,
            "DCR_API_BASE_URL": api_url,
            "DCR_API_TOKEN": TOKEN,
            "DCR_RATE_LIMIT_RPS": "200",
            # The sandbox here has no per-token limit: nor has the service (one static token).
            "DCR_TOKEN_REQUESTS_PER_MINUTE": "1000000",
            "DCR_BATCH_LINGER_MS": "100",
            "DCR_COMMIT_INTERVAL_MS": "200",
            "DCR_RETRY_BASE_MS": "50",
            "DCR_RETRY_CAP_MS": "1000",
            "DCR_HTTP_PORT": "0",
            **{f"DCR_{k.upper()}": v for k, v in overrides.items()},
        }
        service = Service(env, tmp_path / f"service-{len(started)}.log")
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
