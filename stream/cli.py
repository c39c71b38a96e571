"""The ``dcr-stream`` command line: one sub-command per job, each with its own ``--help``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from stream import __version__

Handler = Callable[[argparse.Namespace], int]

EXIT_USAGE = 2
"""Bad flags or configuration: argparse's own code, and what SPEC §7 asks for a bad value."""


def _kafka(args: argparse.Namespace) -> int:
    from stream.devkafka import BrokerError, LocalKafka, fetch_jars

    try:
        if args.fetch_only:
            print(fetch_jars())
            return 0
        broker = LocalKafka(heap_mb=args.heap_mb)
        broker.start()
    except BrokerError as exc:
        print(f"dcr-stream kafka: {exc}", file=sys.stderr)
        return 1
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


def _demo(args: argparse.Namespace) -> int:
    from stream.demo import run

    return run(events=args.events)


def _parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(
        prog="dcr-stream",
        description="Kafka call-intent events to Truecaller's Dynamic Call Records API.",
    )
    parser.add_argument("--version", action="version", version=f"dcr-stream {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Handler] = {}

    kafka = commands.add_parser(
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
    kafka.add_argument("--fetch-only", action="store_true", help="resolve the jars and exit")
    kafka.add_argument("--heap-mb", type=int, default=384, help="JVM heap (default: 384)")
    handlers["kafka"] = _kafka

    demo = commands.add_parser(
        "demo",
        help="run the demo on embedded defaults (starts and stops its own Kafka)",
        description="Start a local Kafka broker, push events through it, print a summary.",
        epilog="examples:\n  dcr-stream demo\n  dcr-stream demo --events 50000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--events", type=int, default=10_000, help="events to produce (default: 10000)"
    )
    handlers["demo"] = _demo
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
