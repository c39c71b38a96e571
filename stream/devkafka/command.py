"""``dcr-stream kafka``: the local broker as a command, for development."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from stream.devkafka import LocalKafka, fetch_jars

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dcr-stream kafka``."""
    parser = commands.add_parser(
        "kafka",
        help="run a local single-node Apache Kafka broker for development",
        description=(
            "Start a single-node Apache Kafka broker (KRaft) from Apache Kafka's own jars on a "
            "free loopback port, print its bootstrap address on stdout, and stop it on Ctrl-C or "
            "SIGTERM. The jars are fetched once with Maven into ~/.cache/dcr-stream (or "
            "$DCR_KAFKA_CACHE)."
        ),
        epilog="examples:\n  dcr-stream kafka\n  dcr-stream kafka --fetch-only",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--fetch-only", action="store_true", help="resolve the jars and exit")
    parser.add_argument("--heap-mb", type=int, default=384, help="JVM heap (default: 384)")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; a ``BrokerError`` goes to the CLI as one line."""
    if args.fetch_only:
        print(fetch_jars())
        return 0
    broker = LocalKafka(heap_mb=args.heap_mb)
    broker.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        print(broker.bootstrap_servers, flush=True)
        print(f"Kafka {broker.version} is up; Ctrl-C stops it.", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        broker.stop()
    return 0
