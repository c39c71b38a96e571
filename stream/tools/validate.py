"""``dcr-stream validate``: check events offline, a verdict per JSON line (docs/operations.md).

Each line is treated exactly like the value of one Kafka message: the same ``validate`` with the
same rules, parsed from the same settings as the service's (``DCR_CLIENT_ACCOUNT_ID``,
``DCR_ALLOWED_LABEL_IDS``, ``DCR_MAX_MESSAGE_BYTES``; a flag wins over its variable). Only the
line's ``\\n`` is removed, so a blank line is an empty message, as an empty value would be.
Expiry is judged against the clock when the command starts.

Exit status: 0 every line is valid, 1 some line is not, 2 bad usage or an unreadable file.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, BinaryIO

import msgspec

from stream.errors import ConfigError
from stream.settings import SETTINGS
from stream.tools.args import EXIT_USAGE
from stream.validation import Rejection, Rules, validate

__all__ = ["STDIN", "Verdict", "add_parser", "run"]

STDIN = "-"
_STDIN_NAME = "<stdin>"
EXIT_INVALID = 1
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""What a shell reports for a filter that SIGPIPE ended."""


class Verdict(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One line's verdict, as ``--json`` prints it; the rejection's parts are absent when ok."""

    source: str
    """The file as named on the command line, or ``<stdin>``."""
    line: int
    ok: bool
    code: str | None = None
    field: str | None = None
    message: str | None = None
    stage: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"{self.source}:{self.line}: ok"
        return f"{self.source}:{self.line}: {self.code} {self.field or '-'} {self.message}"


def run(
    files: Sequence[str],
    *,
    client_account_id: str | None,
    allowed_label_ids: str | None,
    max_message_bytes: str | None,
    as_json: bool,
) -> int:
    """Validate every line of ``files`` (``-`` or none: stdin); print a verdict per line. A bad
    setting raises ``ConfigError`` for the CLI."""
    rules = Rules(
        default_account=_setting("client_account_id", client_account_id),
        allowed_labels=_setting("allowed_label_ids", allowed_label_ids) or {},
        max_message_bytes=_setting("max_message_bytes", max_message_bytes),
    )
    try:
        return _run(files, rules=rules, as_json=as_json)
    except BrokenPipeError:
        # The reader went away (`... | head`): stop quietly, as a filter killed by SIGPIPE would,
        # and point stdout at /dev/null so the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run(files: Sequence[str], *, rules: Rules, as_json: bool) -> int:
    now_ms = time.time_ns() // 1_000_000
    encoder = msgspec.json.Encoder()
    lines = invalid = 0
    unreadable = False
    for name in files or [STDIN]:
        try:
            opened = _open(name)
        except OSError as exc:
            print(f"dcr-stream validate: {name}: {exc.strerror or exc}", file=sys.stderr)
            unreadable = True
            continue
        with opened as values:
            source = _STDIN_NAME if name == STDIN else name
            for verdict in _verdicts(source, values, rules, now_ms):
                lines += 1
                invalid += not verdict.ok
                print(encoder.encode(verdict).decode() if as_json else verdict)
    print(f"{lines} lines: {lines - invalid} ok, {invalid} invalid", file=sys.stderr)
    if unreadable:
        return EXIT_USAGE
    return EXIT_INVALID if invalid else 0


def _setting(field: str, flag: str | None) -> Any:
    """The flag, else its variable, else the service's default, parsed as the service parses it."""
    setting = next(s for s in SETTINGS if s.field == field)
    source: str = setting.env
    text = os.environ.get(setting.env, setting.default)
    if flag is not None:
        source, text = "--" + field.replace("_", "-"), flag
    if not text:
        return None
    try:
        return setting.parse(text)
    except ValueError as exc:
        raise ConfigError(source, str(exc)) from None


def _open(name: str) -> AbstractContextManager[BinaryIO]:
    # stdin stays open: it is not ours to close.
    return nullcontext(sys.stdin.buffer) if name == STDIN else open(name, "rb")


def _verdicts(source: str, lines: BinaryIO, rules: Rules, now_ms: int) -> Iterator[Verdict]:
    for number, line in enumerate(lines, start=1):
        result = validate(line.removesuffix(b"\n"), rules=rules, now_ms=now_ms)
        if isinstance(result, Rejection):
            yield Verdict(
                source=source,
                line=number,
                ok=False,
                code=result.code,
                field=result.field,
                message=result.message,
                stage=result.stage,
            )
        else:
            yield Verdict(source=source, line=number, ok=True)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dcr-stream validate``."""
    parser = commands.add_parser(
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
    parser.add_argument("files", nargs="*", metavar="FILE", help="JSON lines; '-' or none: stdin")
    parser.add_argument(
        "--client-account-id",
        metavar="UUID",
        help="account of events that name none (default: $DCR_CLIENT_ACCOUNT_ID)",
    )
    parser.add_argument(
        "--allowed-label-ids",
        metavar="ACCOUNT:LABEL,...",
        help="label allow-list per account (default: $DCR_ALLOWED_LABEL_IDS)",
    )
    parser.add_argument(
        "--max-message-bytes",
        metavar="N",
        help="largest accepted event (default: $DCR_MAX_MESSAGE_BYTES, else 65536)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object per line")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    return run(
        args.files,
        client_account_id=args.client_account_id,
        allowed_label_ids=args.allowed_label_ids,
        max_message_bytes=args.max_message_bytes,
        as_json=args.json,
    )
