"""``dcr-stream status BATCH_ID``: one accepted batch's per-record statuses, for operators
(docs/operations.md#batch-status).

It asks the batch status endpoint once, with the service's settings (``DCR_API_BASE_URL``,
``DCR_API_VERSION``, the way to authenticate; ``--config`` as ``run`` takes it), for the account
``--account`` or ``DCR_CLIENT_ACCOUNT_ID``, and prints a line per record with the verdict the
reconciler would reach (``delivered``, ``pending`` or ``failed`` and its code).

Static tokens (or a token file) are used as they are. With a key pair it uses a live token the
service's token slots hold (``DCR_TOKEN_TOPIC``, read without joining the slot group); only if
there is none does it mint, and says so first: that mint is one of the account's 10 per 30 minutes,
and the replicas' slot records do not see it (docs/design.md#auth).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter

import msgspec

from stream.api import ApiClient
from stream.config import load
from stream.errors import ConfigError
from stream.leases import read_slots
from stream.minting import live_token
from stream.settings import parse_uuid
from stream.statuses import classify
from stream.tokens import make_source, make_tokens
from stream.tools.args import arg_type
from stream.wire import make_session

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dcr-stream status``."""
    parser = commands.add_parser(
        "status",
        help="print one accepted batch's per-record statuses (the batch status endpoint)",
        description=(
            "Ask the API for the status of one accepted batch and print a line per record:\n"
            "its id, caller, receiver, label, starts_at and verdict (delivered, pending, or\n"
            "failed with its code), then the count of each. Reads the service's DCR_* settings\n"
            "for the API and its credentials. Exit status 1 if the status could not be had."
        ),
        epilog=(
            "examples:\n"
            "  dcr-stream status 6c1f4b1e-0a5d-4f3e-9d51-1b2c3d4e5f60\n"
            "  dcr-stream status --account 6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11 --json BATCH"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("batch_id", metavar="BATCH_ID", help="the batch id of an accepted batch")
    parser.add_argument(
        "--account",
        type=arg_type(parse_uuid),
        help="the client account (default: DCR_CLIENT_ACCOUNT_ID)",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML file; the environment overrides it")
    parser.add_argument("--json", action="store_true", help="print the API's answer as it came")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    config = load(os.environ, args.config)
    account = args.account or config.client_account_id
    if account is None:
        raise ConfigError("--account", "name the account (or set DCR_CLIENT_ACCOUNT_ID)")

    api_key = make_source(config).credentials(account).api_key
    token = None
    if api_key is not None:
        records = read_slots(config.consumer_config(), config.token_topic)
        token = live_token(account, api_key, records, time.time(), config.minting)
        if token is None:
            print(
                f"dcr-stream status: no live token in the service's slots ({config.token_topic}); "
                "minting one, one of the account's 10 per 30 minutes",
                file=sys.stderr,
            )

    async def ask() -> int:
        session = make_session(timeout_s=config.api_timeout_s, ca_bundle=config.api_ca_bundle)
        tokens = make_tokens(config, session, None)
        try:
            client = ApiClient(
                session, base_url=config.api_base_url, version=config.api_version, tokens=tokens
            )
            answer = await client.get_batch_status(
                account, args.batch_id, token or await tokens.get(account)
            )
        finally:
            await tokens.close()
            await session.close()
        if answer.batch is None:
            print(
                f"dcr-stream status: no status for batch {args.batch_id}: "
                f"{answer.status or 'no answer'} {answer.error or ''}".rstrip(),
                file=sys.stderr,
            )
            return 1
        if args.json:
            print(json.dumps(msgspec.to_builtins(answer.batch), indent=2))
            return 0
        verdicts: Counter[str] = Counter()
        for record in answer.batch.data:
            verdict = classify(record)
            shown = verdict.status if verdict.code is None else f"failed:{verdict.code}"
            verdicts[shown] += 1
            print(
                "\t".join(
                    str(value)
                    for value in (
                        record.id,
                        record.caller_number or record.caller,
                        record.receiver_number or record.receiver,
                        record.label_id,
                        record.starts_at,
                        shown,
                        verdict.message or "",
                    )
                )
            )
        summary = ", ".join(f"{n} {verdict}" for verdict, n in sorted(verdicts.items()))
        print(f"batch {args.batch_id}: {len(answer.batch.data)} records: {summary or 'none'}")
        return 0

    return asyncio.run(ask())
