"""The ``dcr-stream`` command line: one sub-command per job, each with its own ``--help``.

``run`` is the service itself and is built here. Every other command is a tool beside it and builds
its own parser next to its code (``add_parser``, which sets the command's ``handler``): ``kafka`` in
``stream.devkafka.command``; ``demo``, ``produce``, ``replay``, ``status`` and ``validate`` in
``stream.tools``; ``sandbox`` in ``stream.sandbox.command``. ``main`` runs every handler under one
error rule.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence

from stream import __version__, logs
from stream.app import Pipeline
from stream.config import load
from stream.devkafka import command as kafka
from stream.errors import ConfigError, DcrStreamError
from stream.sandbox import command as sandbox
from stream.tools import demo, produce, replay, status, validate
from stream.tools.args import EXIT_USAGE

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser, _ = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler: Handler = args.handler
    return _guarded(args.command, lambda: handler(args))


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser, and its commands' parsers by name."""
    parser = argparse.ArgumentParser(
        prog="dcr-stream",
        description="Kafka call-intent events to Truecaller's Dynamic Call Records API.",
    )
    parser.add_argument("--version", action="version", version=f"dcr-stream {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(commands)
    for tool in (kafka, demo, produce, replay, validate, sandbox, status):
        tool.add_parser(commands)
    return parser, dict(commands.choices)


def _guarded(command: str, job: Callable[[], int]) -> int:
    """Run ``job``; a configuration error is one line and exit 2, any other error of ours one line
    and exit 1, Ctrl-C exit 130."""
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


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    config = load(os.environ, args.config)
    logs.setup(config.log_level)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await Pipeline(config).run(stop)

    return asyncio.run(main())


if __name__ == "__main__":
    sys.exit(main())
