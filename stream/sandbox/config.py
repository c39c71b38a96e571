"""How a sandbox starts (``SandboxConfig``), and the ``--labels`` syntax of its command."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from msgspec import Struct

from stream.sandbox.faults import Faults
from stream.sandbox.statuses import StatusRules

__all__ = ["SandboxConfig", "parse_labels"]

_SECRETS = frozenset({"static_token", "static_tokens", "api_key", "key_pairs"})


class SandboxConfig(Struct, frozen=True, kw_only=True):
    """How the sandbox starts; faults and labels can change afterwards, the rest cannot."""

    rate_limit_rps: int | None = 10
    """Per account, requests admitted in any rolling second; more are answered 429. None: no
    per-account limit (the real API documents none: its quota is per token)."""
    token_rate_limit: int | None = None
    """Per token, requests admitted in any rolling ``token_window_s``; more are answered 429. The
    real API allows 60 a minute; None (the default here, so that a test with one static token is
    not held to it) turns the limit off. ``dcr-stream sandbox`` turns it on."""
    token_window_s: float = 60.0
    record_rate_limit: int | None = 100
    """Per token, single-record requests admitted in any rolling ``record_window_s``; more are
    answered 429 (the real API: 100 a second, apart from the batch quota). None: no limit."""
    record_window_s: float = 1.0
    mint_limit: int = 10
    mint_window_s: float = 1800.0
    """At most ``mint_limit`` tokens per account in any rolling ``mint_window_s`` (the real API:
    10 per 30 minutes); a mint over it is answered 429."""
    retry_after: bool = True
    """Whether quota and mint-limit 429s carry ``Retry-After`` (the real API documents none)."""
    token_lifetime_s: float = 3600.0
    static_token: str | None = None
    """A token always accepted, for every account (what ``DCR_API_TOKEN`` holds)."""
    static_tokens: tuple[str, ...] = ()
    """More such tokens (a pool of static tokens); each has its own per-token window."""
    key_id: str | None = None
    api_key: str | None = None
    """The key pair the token endpoint accepts; when unset it accepts any."""
    key_pairs: Mapping[str, tuple[str, str]] = {}
    """Per account, the one key pair (``key_id``, ``api_key``) its token endpoint accepts, as each
    client account of a platform has its own; an account not listed is checked as above."""
    labels: Mapping[str, frozenset[str]] = {}
    """Known label ids per account; an account not listed (or with none) accepts any label id."""
    faults: Faults = Faults()
    statuses: StatusRules = StatusRules()
    """Which accepted records the batch status endpoint reports failed or pending; can change."""
    seed: int | None = None
    """Seeds the random faults (error rate, latency spikes) so that a run can be repeated."""
    tls_cert: str | None = None
    tls_key: str | None = None
    """PEM files: with both set the sandbox serves HTTPS."""

    def __post_init__(self) -> None:
        if self.rate_limit_rps is not None and self.rate_limit_rps < 1:
            raise ValueError("rate_limit_rps must be at least 1")
        if self.token_rate_limit is not None and self.token_rate_limit < 1:
            raise ValueError("token_rate_limit must be at least 1")
        if self.record_rate_limit is not None and self.record_rate_limit < 1:
            raise ValueError("record_rate_limit must be at least 1")
        if self.mint_limit < 1:
            raise ValueError("mint_limit must be at least 1")
        for name in ("token_window_s", "record_window_s", "mint_window_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.token_lifetime_s <= 0:
            raise ValueError("token_lifetime_s must be positive")
        if (self.key_id is None) != (self.api_key is None):
            raise ValueError("key_id and api_key go together")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")

    @property
    def all_static_tokens(self) -> tuple[str, ...]:
        """``static_token`` first, then ``static_tokens``."""
        first = () if self.static_token is None else (self.static_token,)
        return first + tuple(t for t in self.static_tokens if t != self.static_token)

    def __repr__(self) -> str:
        shown = (
            f"{name}={'***' if name in _SECRETS and value else repr(value)}"
            for name, value in msgspec.structs.asdict(self).items()
        )
        return f"SandboxConfig({', '.join(shown)})"


def parse_labels(text: str) -> tuple[str, frozenset[str]]:
    """``ACCOUNT=ID1,ID2`` → ``(account, {id1, id2})``, as ``--labels`` takes it."""
    account, _, ids = text.partition("=")
    labels = frozenset(i.strip() for i in ids.split(",") if i.strip())
    if not account.strip() or not labels:
        raise ValueError(f"--labels wants ACCOUNT=ID1,ID2, not {text!r}")
    return account.strip(), labels
