"""The API's rules as state (docs/api.md): which tokens exist, and what each account may still do.

Nothing here speaks HTTP or reads a clock: every question comes with the monotonic time it is
asked at, so that one request is judged at one instant, and ``stream.sandbox.api`` turns the
answers into responses. State is kept per account (the optional per-account quota, the mint budget,
the known labels) and per token (its account, expiry and its own request window: the API's quota
is 60 requests a minute per token, docs/api.md#quota; the single-record endpoint's is 100 a second
per token, a window of its own). Account ids arrive lower-cased, as
``stream.validation`` compares them.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import uuid
from collections import deque
from collections.abc import Iterable, KeysView, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from msgspec import Struct

from stream.sandbox.config import SandboxConfig

__all__ = ["QUOTA_WINDOW_S", "Cause", "Label", "Rules", "Throttled", "TokenStats"]

QUOTA_WINDOW_S = 1.0
"""``SandboxConfig.rate_limit_rps`` counts an account's requests in a rolling window this long."""

_log = logging.getLogger(__name__)


Cause = Literal["account", "token", "realtime", "mint", "injected"]
"""Why a 429: the per-account quota, the per-token quota, the per-token quota of the single-record
endpoint, the mint budget, or an injected burst."""


class Throttled(NamedTuple):
    """A request over a limit: why, and the ``Retry-After`` to send (None: send none)."""

    message: str
    retry_after_s: float | None
    cause: Cause


class TokenStats(Struct, frozen=True, kw_only=True):
    """One token's use, as the sandbox saw it (the token itself is never shown: its label is)."""

    requests: int
    """Batch requests that carried it, admitted or not."""
    admitted: int
    throttled: int
    """Answered 429 because of its own window."""
    peak: int
    """The most requests that carried it in any rolling window of the per-token limit (60 s by
    default), 429s included: above the limit means a client that does not pace its tokens."""
    realtime_requests: int = 0
    """Single-record requests that carried it, admitted or not."""
    realtime_throttled: int = 0
    """Of those, answered 429 because of its own single-record window."""
    realtime_peak: int = 0
    """The most single-record requests that carried it in any rolling ``record_window_s``."""


@dataclass(slots=True)
class _Account:
    admitted: deque[float] = field(default_factory=deque)
    """Monotonic times of the requests admitted in the last quota window."""
    mints: deque[float] = field(default_factory=deque)
    """Monotonic times of the tokens minted in the last mint window."""


@dataclass(slots=True)
class Label:
    """An entry of an account's label list, as the labels endpoint shows it."""

    id: str
    label_type: str
    created_at: float
    """Wall time, epoch seconds."""
    deleted_at: float | None = None


@dataclass(slots=True)
class _Token:
    label: str
    """How stats name it: ``static-<i>`` or ``minted-<n>`` (the account's n-th mint)."""
    account: str | None
    """None: a static token, good for every account."""
    expires_at: float
    """Monotonic."""
    admitted: deque[float] = field(default_factory=deque)
    """Monotonic times of the requests admitted in the last per-token window."""
    arrived: deque[float] = field(default_factory=deque)
    """Monotonic times of every request that carried it in the last per-token window."""
    requests: int = 0
    admitted_total: int = 0
    throttled: int = 0
    peak: int = 0
    record_admitted: deque[float] = field(default_factory=deque)
    """Monotonic times of the single-record requests admitted in the last ``record_window_s``."""
    record_arrived: deque[float] = field(default_factory=deque)
    record_requests: int = 0
    record_throttled: int = 0
    record_peak: int = 0

    def stats(self) -> TokenStats:
        return TokenStats(
            requests=self.requests,
            admitted=self.admitted_total,
            throttled=self.throttled,
            peak=self.peak,
            realtime_requests=self.record_requests,
            realtime_throttled=self.record_throttled,
            realtime_peak=self.record_peak,
        )


class Rules:
    """The rules' state for one run of a sandbox; a reset starts a new one."""

    _accounts: dict[str, _Account]
    """Made at an account's first request that counts against a limit."""
    _tokens: dict[str, _Token]
    """Minted tokens; expired ones are dropped at the next mint."""
    _static: dict[str, _Token]
    """The static tokens (``static_token``, ``static_tokens``), good for every account."""
    _used: dict[str, dict[str, _Token]]
    """Per account, the tokens its batch requests carried, by label (stats outlive expiry)."""
    _minted: dict[str, int]
    """Per account, how many tokens were minted (names them)."""
    _labels: dict[str, frozenset[str]]
    """Known label ids per account: the dynamic, not deleted ones of ``_lists``."""
    _lists: dict[str, dict[str, Label]]
    """Per account, its label list as the labels endpoint shows it: besides the dynamic labels,
    deleted ones and one static label (which a call record may not carry), in creation order."""

    def __init__(self, config: SandboxConfig) -> None:
        self._config = config
        self._accounts = {}
        self._tokens = {}
        self._static = {
            token: _Token(f"static-{i}", None, float("inf"))
            for i, token in enumerate(config.all_static_tokens)
        }
        self._used = {}
        self._minted = {}
        self._labels = {}
        self._lists = {}
        for account, ids in config.labels.items():
            if ids:
                self._add_labels(account.lower(), ids, 0.0)

    @property
    def tokens(self) -> KeysView[str]:
        """The minted tokens, expired ones included until the next mint."""
        return self._tokens.keys()

    @property
    def labels(self) -> Mapping[str, frozenset[str]]:
        """Known label ids per account; an account not here accepts any label id."""
        return self._labels

    def learn_labels(
        self, account: str, label_ids: Iterable[str], now: float = 0.0
    ) -> frozenset[str]:
        """Add dynamic labels to ``account`` (as if created in the console at wall time ``now``);
        returns the label ids it knows now."""
        known = self._add_labels(account.lower(), label_ids, now)
        _log.info("account %s knows %d label ids", account.lower(), len(known))
        return known

    def _add_labels(self, account: str, label_ids: Iterable[str], now: float) -> frozenset[str]:
        listed = self._listed(account, now)
        for label_id in label_ids:
            # The list shows an id as it was registered (any case); records match it in any case.
            entry = listed.get(label_id.lower())
            if entry is None:
                listed[label_id.lower()] = Label(label_id, "dynamic", now)
            else:
                entry.deleted_at = None
        return self._known(account)

    def forget_labels(
        self, account: str, label_ids: Iterable[str], now: float = 0.0
    ) -> frozenset[str]:
        """Delete labels of ``account`` (at wall time ``now``): batches that carry them are refused,
        and the labels endpoint lists them with ``deleted_at``. Returns the label ids it knows."""
        account = account.lower()
        listed = self._listed(account, now)
        for label_id in _lower(label_ids):
            entry = listed.get(label_id)
            if entry is not None and entry.deleted_at is None:
                entry.deleted_at = now
        known = self._known(account)
        _log.info("account %s knows %d label ids", account, len(known))
        return known

    def label_page(self, account: str, page: int, limit: int) -> list[Label] | None:
        """One page (from 1) of ``account``'s label list; None for an account without one."""
        listed = self._lists.get(account)
        if listed is None:
            return None
        return list(listed.values())[(page - 1) * limit : page * limit]

    def _listed(self, account: str, now: float) -> dict[str, Label]:
        listed = self._lists.get(account)
        if listed is None:
            static = str(uuid.uuid5(uuid.NAMESPACE_URL, f"dcr-sandbox/{account}/static"))
            listed = self._lists[account] = {static: Label(static, "static", now)}
        return listed

    def _known(self, account: str) -> frozenset[str]:
        self._labels[account] = frozenset(
            e.id.lower()
            for e in self._lists[account].values()
            if e.label_type == "dynamic" and e.deleted_at is None
        )
        return self._labels[account]

    def authorised(self, account: str, token: str | None, now: float) -> bool:
        """Whether ``token`` is a static token, or one minted for ``account`` and unexpired."""
        return self._token(account, token, now) is not None

    def _token(self, account: str, token: str | None, now: float) -> _Token | None:
        if not token:
            return None
        for static, state in self._static.items():
            if hmac.compare_digest(token.encode(), static.encode()):
                return state
        minted = self._tokens.get(token)
        if minted is not None and minted.account == account and now < minted.expires_at:
            return minted
        return None

    def admit(self, account: str, token: str | None, now: float) -> Throttled | None:
        """Count one request of an authorised ``token`` against its own window and the account's
        quota, unless it is over either (a refused request counts against neither)."""
        config = self._config
        state = self._token(account, token, now)
        if state is not None and config.token_rate_limit is not None:
            self._used.setdefault(account, {})[state.label] = state
            state.requests += 1
            arrived = state.arrived
            arrived.append(now)
            while arrived and arrived[0] <= now - config.token_window_s:
                arrived.popleft()
            state.peak = max(state.peak, len(arrived))
            limit = config.token_rate_limit
            wait_s = _admit(state.admitted, now, limit, config.token_window_s, count=False)
            if wait_s is not None:
                state.throttled += 1
                window = f"{config.token_window_s:g} s"
                return self._throttled(
                    f"more than {limit} requests per token in {window}", wait_s, "token"
                )
        rps = config.rate_limit_rps
        if rps is not None:
            wait_s = _admit(self._account(account).admitted, now, rps, QUOTA_WINDOW_S)
            if wait_s is not None:
                return self._throttled(f"more than {rps} requests per second", wait_s, "account")
        if state is not None and config.token_rate_limit is not None:
            state.admitted.append(now)
            state.admitted_total += 1
        return None

    def admit_record(self, account: str, token: str | None, now: float) -> Throttled | None:
        """Count one single-record request of an authorised ``token`` against that token's own
        single-record window (``record_rate_limit`` in ``record_window_s``), unless it is over it.
        It counts against neither the batch quota nor the account's."""
        config = self._config
        state = self._token(account, token, now)
        limit = config.record_rate_limit
        if state is None or limit is None:
            return None
        self._used.setdefault(account, {})[state.label] = state
        state.record_requests += 1
        arrived = state.record_arrived
        arrived.append(now)
        while arrived and arrived[0] <= now - config.record_window_s:
            arrived.popleft()
        state.record_peak = max(state.record_peak, len(arrived))
        wait_s = _admit(state.record_admitted, now, limit, config.record_window_s)
        if wait_s is None:
            return None
        state.record_throttled += 1
        window = f"{config.record_window_s:g} s"
        return self._throttled(
            f"more than {limit} single-record requests per token in {window}", wait_s, "realtime"
        )

    def token_stats(self, account: str) -> dict[str, TokenStats]:
        """Per token label, how ``account``'s batch requests used it (with the per-token limit)."""
        return {label: t.stats() for label, t in sorted(self._used.get(account, {}).items())}

    def key_pair_ok(self, account: str, key_id: str, api_key: str) -> bool:
        """Whether the token endpoint takes this pair for ``account``: the account's own, else
        the configured one, or any when none is."""
        own = self._config.key_pairs.get(account)
        want_id, want_key = own or (self._config.key_id, self._config.api_key)
        if want_id is None or want_key is None:
            return True
        id_ok = hmac.compare_digest(key_id.encode(), want_id.encode())
        key_ok = hmac.compare_digest(api_key.encode(), want_key.encode())
        return id_ok and key_ok

    def mint(self, account: str, now: float) -> str | Throttled:
        """A new token for ``account``, unless the mint limit refuses it."""
        config = self._config
        wait_s = _admit(self._account(account).mints, now, config.mint_limit, config.mint_window_s)
        if wait_s is not None:
            message = (
                f"at most {config.mint_limit} tokens per {config.mint_window_s / 60:g} minutes"
            )
            return self._throttled(message, wait_s, "mint")
        self._tokens = {t: held for t, held in self._tokens.items() if now < held.expires_at}
        token = secrets.token_urlsafe(32)
        self._minted[account] = n = self._minted.get(account, 0) + 1
        self._tokens[token] = _Token(f"minted-{n}", account, now + config.token_lifetime_s)
        _log.info("token minted for account %s", account)
        return token

    def _account(self, account: str) -> _Account:
        state = self._accounts.get(account)
        if state is None:
            state = self._accounts[account] = _Account()
        return state

    def _throttled(self, message: str, wait_s: float, cause: Cause) -> Throttled:
        # Float rounding can leave a wait of 0, and a Retry-After of 0 asks for a retry that fails.
        return Throttled(message, max(1.0, wait_s) if self._config.retry_after else None, cause)


def _admit(
    window: deque[float], now: float, limit: int, period_s: float, *, count: bool = True
) -> float | None:
    """Count one use in a rolling window of ``period_s`` (unless ``count`` is false: the caller
    counts it once every other limit agreed); None, or the seconds until a use frees."""
    while window and window[0] <= now - period_s:
        window.popleft()
    if len(window) >= limit:
        return window[0] + period_s - now
    if count:
        window.append(now)
    return None


def _lower(labels: Iterable[str]) -> frozenset[str]:
    return frozenset(label.lower() for label in labels)
