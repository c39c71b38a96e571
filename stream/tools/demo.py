"""``dcr-stream demo``: the whole service on one machine, from nothing, in about half a minute.

1. Start a local Kafka broker (``stream.devkafka``) and ``dcr-stream sandbox`` as a child process
   on free ports: the API is another process, as in production, so the service's event loop does
   not share its time (and its timing) with the API's. The sandbox has the documented limits: it
   mints at most 10 tokens per account in 30 minutes and answers 429 to a token's 61st request in a
   minute (the API's quota: 10 tokens, 10 requests per second per account); it fails 2% of
   requests with a 5xx, and knows two label ids per account.
2. Create the input topic and produce a realistic mix (``stream.tools.produce``): several
   accounts, some high-priority events, a few percent invalid events of eight kinds, and a few
   events that carry a label id no account has registered yet: the accounts' label registries do
   not list it, so the service dead-letters them as ``unknown_label`` before they reach a batch.
3. Run the real ``Pipeline`` in this process, configured through ``stream.config.load`` like
   ``dcr-stream run``, at the API's quota; wait until every event is delivered or dead-lettered
   and the group's committed offsets reach the end of every partition.
4. Register the new label with the sandbox (as in Truecaller's console) and ``replay`` the
   ``unknown_label`` dead letters into the input topic; wait until they are delivered and committed
   too (the registry is read again on the first miss).
5. Stop the service (it drains and leaves the group), print the summary, stop the sandbox and the
   broker. Ctrl-C or SIGTERM at any point does the same cleanup (exit 130).

The exit status is 0 only if every event ended where it should: each valid one accepted by the
sandbox, each invalid one dead-lettered with its own code, and every offset committed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiohttp
from confluent_kafka import Consumer, TopicPartition

from stream import logs
from stream.app import Pipeline
from stream.config import load
from stream.devkafka import BrokerError, LocalKafka, cache_dir, die_with_parent
from stream.errors import DcrStreamError
from stream.tools.args import at_least_one
from stream.tools.produce import (
    DEFAULT_LABEL_ID,
    INVALID_KINDS,
    Mix,
    Produced,
    account_ids,
    events,
    produce,
)
from stream.tools.progress import Progress
from stream.tools.replay import Selection, replay
from stream.topics import TopicSpec, ensure_topics

__all__ = ["add_parser", "run"]

TOPIC = "call-intents"
PARTITIONS = 4
GROUP = "dcr-demo"
LABEL_IDS = (DEFAULT_LABEL_ID, "3c1d9e8a-5b7f-4a2e-9c6d-1e8f7a2b4c5d")
"""Registered with the sandbox for every account."""
NEW_LABEL_ID = "9a7e3f21-6c4d-4b8a-a5e2-7d1c9b3f6e80"
"""Used by a few events before any account registered it: refused by the API until it learns it."""

INVALID_RATIO = 0.02
HIGH_PRIORITY_RATIO = 0.05
NEW_LABEL_RATIO = 0.0002
"""Few on purpose: isolating one refused record in a batch of 500 costs about 18 requests."""
ERROR_RATE = 0.02
TOKENS = 10
TOKEN_RPM = 60
"""The API's quota (docs/api.md#quota): 10 tokens per account, 60 requests a minute each."""
_SEED = 2
"""The same events every run (so the same counts); the timing still varies."""

_KEY_ID, _API_KEY = "demo-key", "demo-secret"
_WAIT_S = 300.0
"""Upper bound of each wait for the service: far beyond a healthy run, short of forever."""
_SHUTDOWN_TIMEOUT_S = 10
_PLAIN_PROGRESS_S = 5.0
_STOP_TIMEOUT_S = 10.0
"""The sandbox stops within its own 1 s shutdown bound; past this it is killed."""
_INTERRUPTED = "\ndcr-stream demo: interrupted; everything it started is stopped"


class _Failed(DcrStreamError):
    """Something the demo started did not do its part (in time)."""


class _Interrupted(DcrStreamError):
    """Ctrl-C or SIGTERM while the event loop runs: the service, if started, drains; then the demo
    ends with 130."""


@dataclass(frozen=True, slots=True)
class _Expected:
    valid: int
    new_label: int
    invalid: dict[str, int]
    """Rejection code → events."""


def run(*, events_count: int, accounts: int, verbose: bool) -> int:
    """``dcr-stream demo``: 0 when every event ended where it should, 1 if not, 130 on Ctrl-C."""
    _setup_logs(verbose)
    # SIGTERM cleans up as Ctrl-C does; the event loop takes both over while it runs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    ids = account_ids(accounts)
    print(f"dcr-stream demo: {events_count:,} call-intent events, local Kafka, the API sandbox")
    broker = LocalKafka()
    sandbox: _SandboxProcess | None = None
    try:
        sandbox = _SandboxProcess(ids)  # starts while the broker does
        _start_broker(broker)
        url = _wait_for_sandbox(sandbox, accounts)
        demo = _Demo(broker.bootstrap_servers, url, ids, started)
        return asyncio.run(demo.main(events_count))
    except (KeyboardInterrupt, _Interrupted):
        print(_INTERRUPTED, file=sys.stderr)
        return 130
    except (_Failed, BrokerError) as exc:
        print(f"dcr-stream demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if sandbox is not None:
            sandbox.stop()
        broker.stop()


def _setup_logs(verbose: bool) -> None:
    if verbose:
        logs.setup("INFO")
        return
    # The summary tells the story; only the service's errors are worth a line meanwhile.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("service: %(levelname)s %(message)s"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.ERROR)


def _start_broker(broker: LocalKafka) -> None:
    if not (cache_dir() / "lib" / ".complete").exists():
        print("  fetching Apache Kafka's jars with Maven (once, into the cache) ...", flush=True)
    print("  starting Kafka ...", flush=True)
    broker.start()
    print(
        f"  Kafka {broker.version} at {broker.bootstrap_servers} (pid {broker.pid}), "
        f"topic {TOPIC}: {PARTITIONS} partitions",
        flush=True,
    )


def _wait_for_sandbox(sandbox: _SandboxProcess, accounts: int) -> str:
    """The sandbox's URL, once it serves."""
    url = sandbox.wait_url()
    print(
        f"  API sandbox at {url} (pid {sandbox.pid}): {accounts} accounts, "
        f"{TOKENS} tokens x {TOKEN_RPM} requests/min each, {ERROR_RATE:.0%} injected 5xx",
        flush=True,
    )
    return url


class _SandboxProcess:
    """``dcr-stream sandbox`` on a free port, killed by the kernel if we die first."""

    def __init__(self, accounts: tuple[str, ...]) -> None:
        labels = ",".join(LABEL_IDS)
        self._proc = subprocess.Popen(
            [
                sys.executable, "-m", "stream", "sandbox", "--port", "0",
                "--token-rate-limit", str(TOKEN_RPM), "--error-rate", str(ERROR_RATE),
                "--key-id", _KEY_ID, "--api-key", _API_KEY,
                *(f"--labels={account}={labels}" for account in accounts),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us; we stop it, after the service drained
            preexec_fn=die_with_parent,
        )  # fmt: skip
        self.pid = self._proc.pid
        self._tail: deque[str] = deque(maxlen=20)

    def wait_url(self) -> str:
        """The URL it prints; then its log is drained (and its tail kept) by a thread."""
        assert self._proc.stdout is not None
        # Lines logged while it starts (its labels) may come before the URL: kept in the tail.
        for raw in self._proc.stdout:
            first = raw.decode(errors="replace").strip()
            if first.startswith("http"):
                break
            self._tail.append(first)
            if not first.startswith("{"):  # not a log line: an error; stop it, keep the rest
                self.stop()
                self._drain()
                raise _Failed("the sandbox did not start:\n" + "\n".join(self._tail))
        else:
            raise _Failed("the sandbox did not start:\n" + "\n".join(self._tail))
        threading.Thread(target=self._drain, name="sandbox-log", daemon=True).start()
        return first

    def _drain(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._tail.append(line.decode(errors="replace").rstrip())

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


class _Demo:
    """Steps 2 to 5, to the summary, on a running broker and sandbox; ``_run`` lists the phases."""

    def __init__(
        self, bootstrap_servers: str, api_url: str, accounts: tuple[str, ...], started: float
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.kafka: dict[str, str | int | float | bool] = {
            "bootstrap.servers": bootstrap_servers,
            "log.connection.close": False,
            "log_level": 3,  # errors only: librdkafka's notices would break the progress line
        }
        self.api_url = api_url
        self.accounts = accounts
        self.started = started
        self.progress = Progress(plain_every_s=_PLAIN_PROGRESS_S)

    async def main(self, count: int) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def interrupt() -> None:
            stop.set()
            for sig in (signal.SIGINT, signal.SIGTERM):  # a second one ends us at once
                loop.remove_signal_handler(sig)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                return await self._run(count, http, stop)
        finally:
            self.progress.close()

    async def _run(self, count: int, http: aiohttp.ClientSession, stop: asyncio.Event) -> int:
        """The phases in order. One that fails raises ``_Failed``; after Ctrl-C or SIGTERM the
        next look at ``stop`` raises ``_Interrupted``. The service drains either way."""
        produced, expected = await self._produce(count, stop)
        service = self._start_service(stop)
        try:
            first_pass_s = await self._run_service_until_done(service, produced.acknowledged)
            replayed, replay_s = await self._replay_rejections(
                http, service, produced.acknowledged, first_pass_s=first_pass_s
            )
            stats = await self._sandbox(http, "stats")
        finally:
            self.progress.close()
            status = await service.stop()
        return _summarise(
            service.pipeline,
            expected,
            service_status=status,
            accepted=stats["totals"]["records_accepted"],
            accounts=len(self.accounts),
            events_in=produced.acknowledged,
            replayed=replayed,
            first_pass_s=first_pass_s,
            replay_s=replay_s,
            elapsed_s=time.monotonic() - self.started,
        )

    async def _produce(self, count: int, stop: asyncio.Event) -> tuple[Produced, _Expected]:
        """Create the topics and produce ``count`` events of the demo's mix to the input topic."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._create_topics)
        mix = Mix(
            accounts=self.accounts,
            label_ids=LABEL_IDS,
            invalid_ratio=INVALID_RATIO,
            high_priority_ratio=HIGH_PRIORITY_RATIO,
            unregistered_label_ids=(NEW_LABEL_ID,),
            unregistered_ratio=NEW_LABEL_RATIO,
            seed=_SEED,
        )
        produced = await loop.run_in_executor(
            None,
            lambda: produce(
                self.kafka, TOPIC, events(mix, count), progress=self.progress, total=count
            ),
        )
        if stop.is_set():
            raise _Interrupted
        if produced.failed:
            raise _Failed(f"{produced.failed:,} events were not acknowledged by Kafka")
        expected = _expected(produced)
        print(
            f"  produced {produced.acknowledged:,} events in {produced.elapsed_s:.1f} s: "
            f"{expected.valid:,} valid, {sum(expected.invalid.values()):,} invalid "
            f"({len(expected.invalid)} kinds), {expected.new_label:,} with a label id no account "
            "has registered yet",
            flush=True,
        )
        return produced, expected

    def _create_topics(self) -> None:
        specs = [
            TopicSpec(name=TOPIC, partitions=PARTITIONS),
            TopicSpec(name=f"{TOPIC}.dlq", partitions=1),
        ]
        ensure_topics(self.kafka, specs)

    def _start_service(self, stop: asyncio.Event) -> _Service:
        """The real service, configured through ``stream.config.load`` as ``dcr-stream run`` is."""
        config = load(
            {
                "DCR_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
                "DCR_KAFKA_TOPICS": TOPIC,
                "DCR_KAFKA_GROUP_ID": GROUP,
                "DCR_API_BASE_URL": self.api_url,
                "DCR_API_KEY_ID": _KEY_ID,
                "DCR_API_KEY": _API_KEY,
                "DCR_TOKEN_POOL_SIZE": str(TOKENS),
                "DCR_TOKEN_REQUESTS_PER_MINUTE": str(TOKEN_RPM),
                "DCR_HTTP_PORT": "0",
                "DCR_SHUTDOWN_TIMEOUT_S": str(_SHUTDOWN_TIMEOUT_S),
            }
        )
        print(
            f"  running the service: {TOKENS} tokens per account at {TOKEN_RPM} requests/min each, "
            "batches of up to "
            "500 ...",
            flush=True,
        )
        return _Service(Pipeline(config), stop, self.kafka)

    async def _run_service_until_done(self, service: _Service, events: int) -> float:
        """Until the service has finished ``events`` records (delivered or dead-lettered) and its
        group has committed the input topic to its end, which holds ``events`` records; with
        progress. Returns the seconds it took."""
        loop = asyncio.get_running_loop()
        counts = service.pipeline.counts
        started = time.monotonic()
        deadline = started + _WAIT_S
        before = sum(counts.delivered.values()) + sum(counts.dead_lettered.values())

        def render() -> str:
            delivered = sum(counts.delivered.values())
            dead = sum(counts.dead_lettered.values())
            requests = sum(counts.requests.values())
            rate = (delivered + dead - before) / max(time.monotonic() - started, 1e-9)
            return (
                f"  service: {delivered + dead:,}/{events:,} done ({delivered:,} delivered, "
                f"{dead:,} dead-lettered), requests {requests:,}, 429s {counts.throttled}, "
                f"retries {counts.retries}, {rate:,.0f} records/s"
            )

        while True:
            service.check()
            if time.monotonic() > deadline:
                raise _Failed(f"not every event was finished within {_WAIT_S:.0f} s")
            self.progress.update(render)
            done = sum(counts.delivered.values()) + sum(counts.dead_lettered.values())
            if done >= events and await loop.run_in_executor(None, service.committed_to, events):
                self.progress.close()
                return time.monotonic() - started
            await asyncio.sleep(0.1)

    async def _replay_rejections(
        self, http: aiohttp.ClientSession, service: _Service, events: int, *, first_pass_s: float
    ) -> tuple[int, float]:
        """Register the new label with the sandbox, replay the ``unknown_label`` dead letters,
        and run the service until they are done too. Returns the records replayed and the
        seconds it took."""
        print(
            f"  first pass done in {first_pass_s:.1f} s; the accounts register label "
            f"{NEW_LABEL_ID[:8]}…, and its dead letters are replayed from {TOPIC}.dlq",
            flush=True,
        )
        started = time.monotonic()
        for account in self.accounts:
            await self._sandbox(http, "labels", {"account": account, "label_ids": [NEW_LABEL_ID]})
        replayed = await asyncio.get_running_loop().run_in_executor(None, self._replay)
        await self._run_service_until_done(service, events + replayed)
        return replayed, time.monotonic() - started

    def _replay(self) -> int:
        selection = Selection(codes=frozenset({"unknown_label"}))
        result = replay(self.kafka, f"{TOPIC}.dlq", select=selection)
        return result.sent

    async def _sandbox(
        self, http: aiohttp.ClientSession, path: str, body: dict[str, Any] | None = None
    ) -> Any:
        """Call the sandbox's control API: POST ``body`` if given, else GET."""
        url = f"{self.api_url}/_sandbox/{path}"
        request = http.get(url) if body is None else http.post(url, json=body)
        try:
            async with request as response:
                response.raise_for_status()
                return await response.json()
        except aiohttp.ClientError as exc:
            raise _Failed(f"{url}: {exc}") from None


class _Service:
    """The real ``Pipeline``, running in this process until ``stop``, and a reader of its group's
    committed offsets."""

    def __init__(
        self, pipeline: Pipeline, stop: asyncio.Event, kafka: dict[str, str | int | float | bool]
    ) -> None:
        self.pipeline = pipeline
        self._stop = stop
        self._task = asyncio.get_running_loop().create_task(pipeline.run(stop))
        self._commits = _Commits(kafka)

    def check(self) -> None:
        """``_Interrupted`` after Ctrl-C or SIGTERM; ``_Failed`` if the service stopped early."""
        if self._stop.is_set():
            raise _Interrupted
        if self._task.done():
            raise _Failed(f"the service stopped early (status {self._task.result()})")

    def committed_to(self, events: int) -> bool:
        """Whether the group committed the input topic to its end, and that end is ``events``."""
        return self._commits.at_end(events)

    async def stop(self) -> int:
        """Stop the service (it drains and leaves the group); its exit status."""
        self._stop.set()
        try:
            return await self._task
        finally:
            self._commits.close()


class _Commits:
    """Reads the demo group's committed offsets from Kafka, as an operator would check them."""

    def __init__(self, kafka: dict[str, str | int | float | bool]) -> None:
        self._consumer = Consumer({**kafka, "group.id": GROUP})
        self._tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]

    def at_end(self, total: int) -> bool:
        """Whether the group committed every partition to its end, and the ends add up to
        ``total`` (so the replayed records are counted in)."""
        committed = self._consumer.committed(self._tps, timeout=10)
        ends = [self._consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self._tps]
        return sum(ends) == total and [tp.offset for tp in committed] == ends

    def close(self) -> None:
        self._consumer.close()


def _expected(produced: Produced) -> _Expected:
    return _Expected(
        valid=produced.expected.get("valid", 0),
        new_label=produced.expected.get("unregistered_label", 0),
        invalid={code: n for code in INVALID_KINDS if (n := produced.expected.get(code, 0))},
    )


def _summarise(
    pipeline: Pipeline,
    expected: _Expected,
    *,
    service_status: int,
    accepted: int,
    accounts: int,
    events_in: int,
    replayed: int,
    first_pass_s: float,
    replay_s: float,
    elapsed_s: float,
) -> int:
    """Print the summary, then what did not end where it should (nothing, normally); return the
    exit status: 0 when nothing, else 1."""
    counts = pipeline.counts
    delivered = sum(counts.delivered.values())
    dead = counts.dead_lettered
    by_class: dict[str, int] = {}
    for (_, status), n in counts.requests.items():
        by_class[status] = by_class.get(status, 0) + n

    def line(label: str, value: str, note: str = "") -> None:
        print(f"  {label:<33}{value:>8}{'   ' + note if note else ''}")

    print("\nsummary")
    line("events in", f"{events_in:,}", f"{PARTITIONS} partitions, {accounts} accounts")
    line("delivered", f"{delivered:,}", f"the sandbox accepted {accepted:,}")
    paths = counts.path_records
    overflow = sum(counts.realtime_overflow.values())
    line("  in batches", f"{paths.get('batch', 0):,}", "the batch endpoint")
    line(
        "  one by one, at once",
        f"{paths.get('realtime', 0):,}",
        f"urgent: the single-record endpoint; {overflow:,} more overflowed to batches",
    )
    line("dead-lettered", f"{sum(dead.values()):,}", "stage, code:")
    for (code, stage), n in sorted(dead.items(), key=lambda item: (item[0][1], item[0][0])):
        line(f"  {stage:<9}{code}", f"{n:,}")
    line("replayed from the DLQ", f"{replayed:,}", "unknown_label, once the label was registered")
    classes = ", ".join(f"{c} {n:,}" for c, n in sorted(by_class.items()))
    line("API requests", f"{sum(by_class.values()):,}", classes)
    ok = counts.path_requests.get(("batch", "2xx"), 0)
    mean = paths.get("batch", 0) / max(ok, 1)
    line("mean batch size", f"{mean:.1f}", "records per accepted batch request")
    quota = f"quota {TOKENS} tokens x {TOKEN_RPM} requests/min per account"
    line("429 answers", f"{counts.throttled:,}", quota)
    line("retries", f"{counts.retries:,}", f"and {counts.bisections:,} bisections")
    line(
        "elapsed",
        f"{elapsed_s:.1f} s",
        f"first pass {first_pass_s:.1f} s ({events_in / first_pass_s:,.0f} records/s), "
        f"replay {replay_s:.1f} s",
    )
    problems = []
    if delivered != expected.valid + expected.new_label or accepted != delivered:
        problems.append(
            f"{delivered:,} delivered and {accepted:,} accepted by the sandbox, expected "
            f"{expected.valid + expected.new_label:,}"
        )
    by_code: dict[str, int] = {}
    for (code, _), n in dead.items():
        by_code[code] = by_code.get(code, 0) + n
    want = {**expected.invalid, "unknown_label": expected.new_label}
    if {c: n for c, n in by_code.items() if n} != {c: n for c, n in want.items() if n}:
        problems.append(f"dead-lettered by code {by_code}, expected {want}")
    if replayed != expected.new_label:
        problems.append(f"replayed {replayed:,}, expected {expected.new_label:,}")
    if service_status != 0:
        problems.append(f"the service exited with status {service_status}")
    if not problems:
        print("  every event ended where it belongs, and every offset is committed")
    for problem in problems:
        print(f"dcr-stream demo: {problem}", file=sys.stderr)
    return 1 if problems else 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dcr-stream demo``."""
    parser = commands.add_parser(
        "demo",
        help="the whole service on this machine: local Kafka, the API sandbox, a summary",
        description=(
            "Start a local Kafka broker and the API sandbox (60 requests/min per token, 10\n"
            "tokens per account in 30 minutes, 2% 5xx, two registered label ids per account),\n"
            "produce a realistic mix of call-intent events (a few percent invalid, some high\n"
            "priority, a few with a label id the API does not know yet), run the real service on\n"
            "them at the API's quota until every event is delivered or dead-lettered and\n"
            "committed, register the new label and replay its dead letters (unknown_label) from\n"
            "the dead-letter topic, then print a summary and stop everything it started (also on\n"
            "Ctrl-C). Needs Java 17+; the first run fetches\n"
            "Kafka's jars with Maven. Exit status: 0 every event ended where it belongs, 1 not,\n"
            "130 interrupted."
        ),
        epilog=(
            "examples:\n"
            "  dcr-stream demo\n"
            "  dcr-stream demo --events 200000 --accounts 8\n"
            "  dcr-stream demo --events 2000 --verbose"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--events",
        type=at_least_one,
        default=50_000,
        metavar="N",
        help="events to produce (default: 50000)",
    )
    parser.add_argument(
        "--accounts",
        type=at_least_one,
        default=4,
        metavar="N",
        help="client accounts, each with its own quota (default: 4)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="also show the service's JSON log lines (stdout)"
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    return run(events_count=args.events, accounts=args.accounts, verbose=args.verbose)
