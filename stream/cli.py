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


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from stream import logs
    from stream.app import Pipeline
    from stream.config import load
    from stream.errors import ConfigError

    try:
        config = load(os.environ, args.config)
    except ConfigError as exc:
        print(f"dcr-stream run: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(config.log_level)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await Pipeline(config).run(stop)

    return asyncio.run(main())


def _validate(args: argparse.Namespace) -> int:
    from stream.validate_cmd import run

    return run(
        args.files,
        client_account_id=args.client_account_id,
        allowed_label_ids=args.allowed_label_ids,
        max_message_bytes=args.max_message_bytes,
        as_json=args.json,
    )


def _sandbox(args: argparse.Namespace) -> int:
    from stream.sandbox import Faults, SandboxConfig, parse_labels, serve

    try:
        config = SandboxConfig(
            rate_limit_rps=args.rate_limit_rps,
            retry_after=args.retry_after,
            token_lifetime_s=args.token_lifetime_s,
            static_token=args.static_token,
            key_id=args.key_id,
            api_key=args.api_key,
            labels=dict(parse_labels(text) for text in args.labels),
            faults=Faults(
                error_rate=args.error_rate,
                latency_ms=args.latency_ms,
                spike_probability=args.spike_probability,
                spike_ms=args.spike_ms,
            ),
            seed=args.seed,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    except ValueError as exc:
        print(f"dcr-stream sandbox: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return serve(config, host=args.host, port=args.port, log_requests=args.log_requests)


def _parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(
        prog="dcr-stream",
        description="Kafka call-intent events to Truecaller's Dynamic Call Records API.",
    )
    parser.add_argument("--version", action="version", version=f"dcr-stream {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    handlers: dict[str, Handler] = {}

    run = commands.add_parser(
        "run",
        help="run the service: Kafka → validate → batch → API, commit after success",
        description=(
            "Consume call-intent events, validate them, send them in batches to the Dynamic Call "
            "Records API under the quota, dead-letter what cannot be delivered, and commit offsets "
            "only after success. Configured by DCR_* environment variables (see the README) over "
            "an optional TOML file. SIGTERM or Ctrl-C drains and exits."
        ),
        epilog=(
            "examples:\n"
            "  DCR_API_BASE_URL=http://127.0.0.1:8081 DCR_API_TOKEN=t dcr-stream run\n"
            "  dcr-stream run --config dcr-stream.toml"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--config", metavar="FILE", help="TOML file; the environment overrides it")
    handlers["run"] = _run

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

    validate = commands.add_parser(
        "validate",
        help="check call-intent events offline: a verdict per JSON line",
        description=(
            "Check call-intent events, one JSON object per line, from FILEs or stdin against\n"
            "every rule the service applies. Prints a verdict per line on stdout,\n"
            "  SOURCE:LINE: ok\n"
            "  SOURCE:LINE: CODE FIELD MESSAGE    (FIELD is - when none)\n"
            "and a count on stderr. Exit status: 0 all valid, 1 some invalid, 2 bad usage or\n"
            "an unreadable file. Expiry is judged against the clock."
        ),
        epilog=(
            "examples:\n"
            "  dcr-stream validate events.jsonl more.jsonl\n"
            "  dcr-stream validate --allowed-label-ids ACCOUNT:LABEL,ACCOUNT:LABEL events.jsonl\n"
            '  dcr-stream validate --client-account-id "$ACCOUNT_ID" - < events.jsonl\n'
            "  kcat -C -b localhost:9092 -t call-intents -e | dcr-stream validate --json\n"
            "  dcr-stream validate schemas/examples/valid/*.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    validate.add_argument("files", nargs="*", metavar="FILE", help="JSON lines; '-' or none: stdin")
    validate.add_argument(
        "--client-account-id",
        metavar="UUID",
        help="account of events that name none (default: $DCR_CLIENT_ACCOUNT_ID)",
    )
    validate.add_argument(
        "--allowed-label-ids",
        metavar="ACCOUNT:LABEL,...",
        help="label allow-list per account (default: $DCR_ALLOWED_LABEL_IDS)",
    )
    validate.add_argument(
        "--max-message-bytes",
        metavar="N",
        help="largest accepted event (default: $DCR_MAX_MESSAGE_BYTES, else 65536)",
    )
    validate.add_argument("--json", action="store_true", help="print a JSON object per line")
    handlers["validate"] = _validate
    sandbox = commands.add_parser(
        "sandbox",
        help="run a local stand-in for the Dynamic Call Records API, with fault injection",
        description=(
            "Serve the API's v1 and v2 batch endpoints and its token endpoint with the documented\n"
            "rules (500 records a request, every record checked like an event, 10 tokens per\n"
            "30 minutes per account, a per-account request quota answered 429), plus faults to\n"
            "inject. Prints its URL as the first line on stdout, logs JSON lines after it, and\n"
            "runs until Ctrl-C or SIGTERM. Faults, labels and counters can be read and changed\n"
            "while it runs under /_sandbox/ (stats, accepted, faults, labels, reset)."
        ),
        epilog=(
            "examples:\n"
            "  dcr-stream sandbox --port 8081 --static-token dev\n"
            "  dcr-stream sandbox --key-id K --api-key S --labels ACCOUNT=LABEL1,LABEL2\n"
            "  dcr-stream sandbox --error-rate 0.3 --seed 7 --latency-ms 50 --no-retry-after\n"
            '  curl -d \'{"outage": "drop", "outage_s": 30}\' localhost:8081/_sandbox/faults'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sandbox.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    sandbox.add_argument(
        "--port", type=int, default=8081, help="port; 0 picks a free one (default: 8081)"
    )
    sandbox.add_argument(
        "--rate-limit-rps",
        type=int,
        default=10,
        metavar="N",
        help="requests per account in any rolling second before 429 (default: 10)",
    )
    sandbox.add_argument(
        "--retry-after",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send Retry-After with quota and mint-limit 429s (default: on)",
    )
    sandbox.add_argument(
        "--token-lifetime-s",
        type=float,
        default=3600.0,
        metavar="S",
        help="lifetime of minted tokens (default: 3600)",
    )
    sandbox.add_argument(
        "--static-token", metavar="TOKEN", help="a bearer token always accepted (default: none)"
    )
    sandbox.add_argument("--key-id", help="key_id the token endpoint accepts (default: any)")
    sandbox.add_argument("--api-key", help="api_key the token endpoint accepts (default: any)")
    sandbox.add_argument(
        "--labels",
        action="append",
        default=[],
        metavar="ACCOUNT=ID,...",
        help="known label ids of an account, repeatable; unlisted accounts accept any",
    )
    sandbox.add_argument(
        "--error-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of batch requests answered 500/502/503 (default: 0)",
    )
    sandbox.add_argument(
        "--latency-ms", type=float, default=0.0, metavar="MS", help="added latency (default: 0)"
    )
    sandbox.add_argument(
        "--spike-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="chance of a latency spike per request (default: 0)",
    )
    sandbox.add_argument(
        "--spike-ms", type=float, default=0.0, metavar="MS", help="latency spike (default: 0)"
    )
    sandbox.add_argument("--seed", type=int, help="seed of the random faults (default: random)")
    sandbox.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    sandbox.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    sandbox.add_argument("--log-requests", action="store_true", help="log a line per batch request")
    handlers["sandbox"] = _sandbox
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
