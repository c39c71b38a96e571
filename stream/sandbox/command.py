"""``dcr-stream sandbox``: the API stand-in as a command (``stream.sandbox.serve``)."""

from __future__ import annotations

import argparse
import sys

from stream.credentials import parse_credentials
from stream.sandbox import Faults, SandboxConfig, StatusRules, parse_labels, serve
from stream.sandbox.statuses import parse_failure
from stream.tools.args import EXIT_USAGE

__all__ = ["add_parser"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dcr-stream sandbox``."""
    parser = commands.add_parser(
        "sandbox",
        help="run a local stand-in for the Dynamic Call Records API, with fault injection",
        description=(
            "Serve the API's v1 and v2 batch endpoints and its token endpoint with the documented\n"
            "rules (500 records a request, every record checked like an event, 60 requests a\n"
            "minute per token and 10 tokens per 30 minutes per account, each answered 429 past\n"
            "it; optionally a per-account quota too), plus faults to inject. Prints its URL as\n"
            "the first line on stdout, logs JSON lines after it, and runs until Ctrl-C or\n"
            "SIGTERM. Faults, labels and counters can be read and changed while it runs under\n"
            "/_sandbox/ (stats, accepted, faults, labels, statuses, reset). The batch status\n"
            "endpoints report every accepted record pushed, but for the receivers named by\n"
            "--not-user-prefix / --fail-prefix, and those still pending for --pending-s."
        ),
        epilog=(
            "examples:\n"
            "  dcr-stream sandbox --port 8081 --static-token dev\n"
            "  dcr-stream sandbox --static-token t1 --static-token t2 --rate-limit-rps 10\n"
            "  dcr-stream sandbox --key-id K --api-key S --labels ACCOUNT=LABEL1,LABEL2\n"
            "  dcr-stream sandbox --error-rate 0.3 --seed 7 --latency-ms 50 --no-retry-after\n"
            "  dcr-stream sandbox --not-user-prefix +9199 --pending-s 120\n"
            '  curl -d \'{"outage": "drop", "outage_s": 30}\' localhost:8081/_sandbox/faults'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8081, help="port; 0 picks a free one (default: 8081)"
    )
    parser.add_argument(
        "--rate-limit-rps",
        type=int,
        metavar="N",
        help="requests per account in any rolling second before 429 (default: no such limit)",
    )
    parser.add_argument(
        "--token-rate-limit",
        type=_limit,
        default=60,
        metavar="N|off",
        help="requests per token in any rolling --token-window-s before 429 (default: 60)",
    )
    parser.add_argument(
        "--token-window-s", type=float, default=60.0, metavar="S", help="(default: 60)"
    )
    parser.add_argument(
        "--record-rate-limit",
        type=_limit,
        default=100,
        metavar="N|off",
        help="single-record requests per token in any rolling second before 429 (default: 100)",
    )
    parser.add_argument(
        "--mint-limit",
        type=int,
        default=10,
        metavar="N",
        help="tokens minted per account in any rolling --mint-window-s before 429 (default: 10)",
    )
    parser.add_argument(
        "--mint-window-s", type=float, default=1800.0, metavar="S", help="(default: 1800)"
    )
    parser.add_argument(
        "--retry-after",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send Retry-After with quota and mint-limit 429s (default: on)",
    )
    parser.add_argument(
        "--token-lifetime-s",
        type=float,
        default=3600.0,
        metavar="S",
        help="lifetime of minted tokens (default: 3600)",
    )
    parser.add_argument(
        "--static-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="a bearer token always accepted, for every account; repeatable (default: none)",
    )
    parser.add_argument("--key-id", help="key_id the token endpoint accepts (default: any)")
    parser.add_argument("--api-key", help="api_key the token endpoint accepts (default: any)")
    parser.add_argument(
        "--credentials-file",
        metavar="PATH",
        help="the service's credentials file (DCR_API_CREDENTIALS_FILE, JSON or TOML): each "
        "account's key pair is the only one its token endpoint accepts, and its tokens are "
        "accepted as static tokens",
    )
    parser.add_argument(
        "--labels",
        action="append",
        default=[],
        metavar="ACCOUNT=ID,...",
        help="known label ids of an account, repeatable; unlisted accounts accept any",
    )
    parser.add_argument(
        "--error-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of batch requests answered 500/502/503 (default: 0)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, metavar="MS", help="added latency (default: 0)"
    )
    parser.add_argument(
        "--spike-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="chance of a latency spike per request (default: 0)",
    )
    parser.add_argument(
        "--spike-ms", type=float, default=0.0, metavar="MS", help="latency spike (default: 0)"
    )
    parser.add_argument(
        "--not-user-prefix",
        action="append",
        default=[],
        metavar="PREFIX",
        help="batch status: receivers starting with it are not Truecaller users; repeatable",
    )
    parser.add_argument(
        "--fail-prefix",
        action="append",
        default=[],
        metavar="REASON=PREFIX",
        help="batch status: receivers starting with PREFIX fail with REASON (not_truecaller_user, "
        "os_not_supported, app_version_not_supported, push_failed, invalid_input); repeatable",
    )
    parser.add_argument(
        "--pending-s",
        type=float,
        default=0.0,
        metavar="S",
        help="batch status: records stay pending this long after their batch (default: 0)",
    )
    parser.add_argument(
        "--pending-prefix",
        default="",
        metavar="PREFIX",
        help="only receivers starting with it stay pending (default: every record)",
    )
    parser.add_argument("--seed", type=int, help="seed of the random faults (default: random)")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    parser.add_argument("--log-requests", action="store_true", help="log a line per batch request")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    try:
        key_pairs, file_tokens = _credentials(args.credentials_file)
        config = SandboxConfig(
            rate_limit_rps=args.rate_limit_rps,
            token_rate_limit=args.token_rate_limit,
            token_window_s=args.token_window_s,
            record_rate_limit=args.record_rate_limit,
            mint_limit=args.mint_limit,
            mint_window_s=args.mint_window_s,
            retry_after=args.retry_after,
            token_lifetime_s=args.token_lifetime_s,
            static_tokens=tuple(args.static_token) + file_tokens,
            key_id=args.key_id,
            api_key=args.api_key,
            key_pairs=key_pairs,
            labels=dict(parse_labels(text) for text in args.labels),
            faults=Faults(
                error_rate=args.error_rate,
                latency_ms=args.latency_ms,
                spike_probability=args.spike_probability,
                spike_ms=args.spike_ms,
            ),
            statuses=StatusRules(
                failures=(
                    *((p, "not_truecaller_user") for p in args.not_user_prefix),
                    *(parse_failure(text) for text in args.fail_prefix),
                ),
                pending_s=args.pending_s,
                pending_prefix=args.pending_prefix,
            ),
            seed=args.seed,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    except (ValueError, OSError) as exc:  # a bad flag, or a credentials file unreadable or bad
        print(f"dcr-stream sandbox: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return serve(config, host=args.host, port=args.port, log_requests=args.log_requests)


def _limit(text: str) -> int | None:
    """A positive whole number, or ``off``."""
    if text == "off":
        return None
    return int(text)


def _credentials(path: str | None) -> tuple[dict[str, tuple[str, str]], tuple[str, ...]]:
    """The key pairs per account and the tokens of a credentials file (none without one)."""
    if path is None:
        return {}, ()
    with open(path, encoding="utf-8") as f:
        accounts = parse_credentials(f.read())
    pairs = {
        account: (c.key_id, c.api_key.reveal())
        for account, c in accounts.items()
        if c.key_id is not None and c.api_key is not None
    }
    tokens = tuple(t.reveal() for c in accounts.values() for t in c.tokens)
    return pairs, tokens
