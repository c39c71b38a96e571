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
    from stream.tools.demo import run

    return _guarded(
        "demo", lambda: run(events_count=args.events, accounts=args.accounts, verbose=args.verbose)
    )


def _guarded(command: str, job: Callable[[], int]) -> int:
    """Run ``job``; a configuration error is one line and exit 2, any other error of ours one line
    and exit 1, Ctrl-C exit 130."""
    from stream.errors import ConfigError, DcrStreamError

    try:
        return job()
    except ConfigError as exc:
        print(f"dcr-stream {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DcrStreamError as exc:
        print(f"dcr-stream {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _produce(args: argparse.Namespace) -> int:
    import os

    from stream.tools.produce import DEFAULT_LABEL_ID, Mix, account_ids, run

    if args.count is None and args.duration is None:
        print(
            "dcr-stream produce: give --count N, or --duration S (with --rate R)", file=sys.stderr
        )
        return EXIT_USAGE
    mix = Mix(
        accounts=account_ids(args.accounts) if isinstance(args.accounts, int) else args.accounts,
        label_ids=tuple(args.label_id or (DEFAULT_LABEL_ID,)),
        invalid_ratio=args.invalid_ratio,
        high_priority_ratio=args.high_priority_ratio,
        seed=args.seed,
    )
    return _guarded(
        "produce",
        lambda: run(
            env=os.environ,
            bootstrap_servers=args.bootstrap_servers,
            topic=args.topic,
            partitions=args.partitions,
            count=args.count,
            rate=args.rate,
            duration_s=args.duration,
            mix=mix,
        ),
    )


def _replay(args: argparse.Namespace) -> int:
    import os

    from stream.tools.replay import Selection, run

    select = Selection(
        codes=frozenset(code for codes in args.code for code in codes),
        stages=frozenset(args.stage),
        partitions=frozenset(args.partition),
        offset_from=args.offset_from,
        offset_to=args.offset_to,
    )
    return _guarded(
        "replay",
        lambda: run(
            env=os.environ,
            bootstrap_servers=args.bootstrap_servers,
            dlq_topic=args.from_topic,
            to=args.to,
            select=select,
            dry_run=args.dry_run,
        ),
    )


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is less than 1")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _uuid(text: str) -> str:
    import re

    from stream.events import UUID_PATTERN

    if not re.match(UUID_PATTERN, text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a UUID")
    return text.strip().lower()


def _accounts(text: str) -> int | tuple[str, ...]:
    """``N`` (that many generated ids) or ``ID,ID,...``."""
    if text.strip().isdigit():
        return _at_least_one(text)
    ids = tuple(_uuid(part) for part in text.split(",") if part.strip())
    if not ids:
        raise argparse.ArgumentTypeError("give a number or account ids")
    return ids


def _codes(text: str) -> list[str]:
    """``CODE[,CODE]``, each a rejection code of ``stream.validation.CODES``."""
    from stream.validation import CODES

    codes = [code.strip() for code in text.split(",") if code.strip()]
    unknown = [code for code in codes if code not in CODES]
    if unknown or not codes:
        raise argparse.ArgumentTypeError(
            f"unknown code {', '.join(unknown) or repr(text)}; the codes are {', '.join(CODES)}"
        )
    return codes


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
    from stream.tools.validate import run

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
        help="the whole service on this machine: local Kafka, the API sandbox, a summary",
        description=(
            "Start a local Kafka broker and the API sandbox (10 requests/s per account, 2% 5xx,\n"
            "two registered label ids per account), produce a realistic mix of call-intent events\n"
            "(a few percent invalid, some high priority, a few with a label id the API does not\n"
            "know yet), run the real service on them at the API's quota until every event is\n"
            "delivered or dead-lettered and committed, register the new label and replay the\n"
            "API's rejections from the dead-letter topic, then print a summary and stop\n"
            "everything it started (also on Ctrl-C). Needs Java 17+; the first run fetches\n"
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
    demo.add_argument(
        "--events",
        type=_at_least_one,
        default=50_000,
        metavar="N",
        help="events to produce (default: 50000)",
    )
    demo.add_argument(
        "--accounts",
        type=_at_least_one,
        default=4,
        metavar="N",
        help="client accounts, each with its own quota (default: 4)",
    )
    demo.add_argument(
        "--verbose", action="store_true", help="also show the service's JSON log lines (stdout)"
    )
    handlers["demo"] = _demo

    produce = commands.add_parser(
        "produce",
        help="send synthetic call-intent events to a topic (load, demos, tests)",
        description=(
            "Send synthetic call-intent events to a Kafka topic: valid events from a few callers\n"
            "per account to unique receivers, keyed caller:receiver, with starts_at now and\n"
            "ends_at six hours on; a share of them broken in one of several ways (each gets its\n"
            "own rejection code) and a share marked high priority. The topic is created with\n"
            "--partitions if it does not exist. A progress bar goes to stderr on a terminal; a\n"
            "summary line to stdout at the end. Exit status: 0 all acknowledged by Kafka, 1 some\n"
            "not (or Kafka unreachable), 2 bad usage, 130 interrupted (what was sent is flushed)."
        ),
        epilog=(
            "examples:\n"
            "  dcr-stream produce --count 1000000\n"
            "  dcr-stream produce --topic call-intents --count 50000 --invalid-ratio 0.02 "
            "--accounts 4 --high-priority-ratio 0.1\n"
            "  dcr-stream produce --rate 2000 --duration 300 --bootstrap-servers kafka:9092\n"
            "  dcr-stream produce --count 10 --accounts 6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11 "
            "--label-id 0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a\n"
            "  DCR_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 dcr-stream produce --count 1000 --seed 7"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    produce.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="Kafka (default: $DCR_KAFKA_BOOTSTRAP_SERVERS, else localhost:9092); "
        "$DCR_KAFKA_CONFIG and $DCR_KAFKA_SECRET_CONFIG apply as for run",
    )
    produce.add_argument(
        "--topic", help="where to send (default: the first of $DCR_KAFKA_TOPICS, else call-intents)"
    )
    produce.add_argument(
        "--partitions",
        type=_at_least_one,
        default=4,
        metavar="N",
        help="partitions of the topic if it has to be created (default: 4)",
    )
    produce.add_argument("--count", type=_at_least_one, metavar="N", help="events to send")
    produce.add_argument(
        "--rate", type=_positive, metavar="R", help="events per second at most (default: no limit)"
    )
    produce.add_argument(
        "--duration",
        type=_positive,
        metavar="S",
        help="stop after S seconds (with or without --count)",
    )
    produce.add_argument(
        "--invalid-ratio",
        type=_ratio,
        default=0.0,
        metavar="F",
        help="share of invalid events, of 8 kinds in turn (default: 0)",
    )
    produce.add_argument(
        "--accounts",
        type=_accounts,
        default=1,
        metavar="N|ID,...",
        help="N generated client account ids (the same every run), or these ids (default: 1)",
    )
    produce.add_argument(
        "--high-priority-ratio",
        type=_ratio,
        default=0.0,
        metavar="F",
        help='share of events with "priority": "high" (default: 0)',
    )
    produce.add_argument(
        "--label-id",
        type=_uuid,
        action="append",
        metavar="UUID",
        help="label id of the events, repeatable: drawn at random (default: "
        "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a)",
    )
    produce.add_argument("--seed", type=int, help="seed of the random choices (default: random)")
    handlers["produce"] = _produce

    replay = commands.add_parser(
        "replay",
        help="re-publish dead-lettered records to an input topic once their cause is fixed",
        description=(
            "Read the dead-letter topic from its beginning to its current end (no consumer\n"
            "group, nothing committed) and produce the records that match every filter given\n"
            "to --to, or else to the topic each was consumed from (its dcr.source.topic header),\n"
            "with the original key, value and headers: every dcr.* header is stripped. Filters\n"
            "take source coordinates and the dead-letter headers (see the README's rejection\n"
            "codes). Each run reads the whole topic, so replaying twice sends twice: try\n"
            "--dry-run first, which prints a line per record,\n"
            "  SOURCE_TOPIC[PARTITION]@OFFSET CODE STAGE -> TARGET\n"
            "and a count on stderr. Exit status: 0 done, 1 Kafka unreachable or a record not\n"
            "acknowledged, 2 bad usage."
        ),
        epilog=(
            "examples:\n"
            "  dcr-stream replay --stage api --dry-run\n"
            "  dcr-stream replay --from call-intents.dlq --stage api --code api_rejected\n"
            "  dcr-stream replay --code expired,timestamp_seconds --to call-intents-fixed\n"
            "  dcr-stream replay --partition 3 --offset-from 1200 --offset-to 1299 "
            "--bootstrap-servers kafka:9092\n"
            "  DCR_KAFKA_TOPICS=orders-calls dcr-stream replay --dry-run"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument(
        "--bootstrap-servers",
        metavar="HOST:PORT",
        help="Kafka (default: $DCR_KAFKA_BOOTSTRAP_SERVERS, else localhost:9092); "
        "$DCR_KAFKA_CONFIG and $DCR_KAFKA_SECRET_CONFIG apply as for run",
    )
    replay.add_argument(
        "--from",
        dest="from_topic",
        metavar="TOPIC",
        help="the dead-letter topic (default: $DCR_DLQ_TOPIC, else the first of "
        "$DCR_KAFKA_TOPICS plus .dlq, else call-intents.dlq)",
    )
    replay.add_argument(
        "--to", metavar="TOPIC", help="where to send (default: each record's dcr.source.topic)"
    )
    replay.add_argument(
        "--code",
        action="append",
        default=[],
        type=_codes,
        metavar="CODE[,CODE]",
        help="only these dcr.error.code values; repeatable",
    )
    replay.add_argument(
        "--stage",
        action="append",
        default=[],
        choices=("decode", "validate", "expired", "api"),
        help="only this dcr.error.stage; repeatable",
    )
    replay.add_argument(
        "--partition",
        action="append",
        default=[],
        type=int,
        metavar="N",
        help="only records from this source partition; repeatable",
    )
    replay.add_argument(
        "--offset-from", type=int, metavar="N", help="only source offsets from N (inclusive)"
    )
    replay.add_argument(
        "--offset-to", type=int, metavar="N", help="only source offsets up to N (inclusive)"
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="list what would be sent; send nothing"
    )
    handlers["replay"] = _replay

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
