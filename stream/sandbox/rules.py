"""The API's rules as state (docs/api.md): which tokens exist, and what each account may still do.

Nothing here speaks HTTP or reads a clock: every question comes with the monotonic time it is
asked at, so that one request is judged at one instant, and ``stream.sandbox.api`` turns the
answers into responses. State is kept per account (the request quota, the mint budget, the known
labels) and per token (its account and expiry); a limit the API applies per token belongs on
``_Token``. Account ids arrive lower-cased, as ``stream.validation`` compares them.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import uuid
from collections import deque
from collections.abc import Iterable, KeysView, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from stream.sandbox.config import SandboxConfig

__all__ = ["MINT_LIMIT", "MINT_WINDOW_S", "QUOTA_WINDOW_S", "Label", "Rules", "Throttled"]

MINT_LIMIT = 10
MINT_WINDOW_S = 30 * 60
"""At most ``MINT_LIMIT`` tokens per account in any ``MINT_WINDOW_S``."""
QUOTA_WINDOW_S = 1.0
"""``SandboxConfig.rate_limit_rps`` counts an account's requests in a rolling window this long."""

_log = logging.getLogger(__name__)


class Throttled(NamedTuple):
    """A request over a limit: why, and the ``Retry-After`` to send (None: send none)."""

    message: str
    retry_after_s: float | None


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
    account: str
    expires_at: float
    """Monotonic."""


class Rules:
    """The rules' state for one run of a sandbox; a reset starts a new one."""

    _accounts: dict[str, _Account]
    """Made at an account's first request that counts against a limit."""
    _tokens: dict[str, _Token]
    """Minted tokens; expired ones are dropped at the next mint."""
    _labels: dict[str, frozenset[str]]
    """Known label ids per account: the dynamic, not deleted ones of ``_lists``."""
    _lists: dict[str, dict[str, Label]]
    """Per account, its label list as the labels endpoint shows it: besides the dynamic labels,
    deleted ones and one static label (which a call record may not carry), in creation order."""

    def __init__(self, config: SandboxConfig) -> None:
        self._config = config
        self._accounts = {}
        self._tokens = {}
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
        for label_id in _lower(label_ids):
            entry = listed.get(label_id)
            if entry is None:
                listed[label_id] = Label(label_id, "dynamic", now)
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
            e.id
            for e in self._lists[account].values()
            if e.label_type == "dynamic" and e.deleted_at is None
        )
        return self._labels[account]

    def authorised(self, account: str, token: str | None, now: float) -> bool:
        """Whether ``token`` is the static token, or one minted for ``account`` and unexpired."""
        if not token:
            return False
        static = self._config.static_token
        if static is not None and hmac.compare_digest(token.encode(), static.encode()):
            return True
        minted = self._tokens.get(token)
        return minted is not None and minted.account == account and now < minted.expires_at

    def admit(self, account: str, now: float) -> Throttled | None:
        """Count one request against the account's quota, unless it is over it."""
        rps = self._config.rate_limit_rps
        wait_s = _admit(self._account(account).admitted, now, rps, QUOTA_WINDOW_S)
        if wait_s is None:
            return None
        return self._throttled(f"more than {rps} requests per second", wait_s)

    def key_pair_ok(self, key_id: str, api_key: str) -> bool:
        """Whether the token endpoint takes this pair: the configured one, or any when none is."""
        if self._config.key_id is None or self._config.api_key is None:
            return True
        id_ok = hmac.compare_digest(key_id.encode(), self._config.key_id.encode())
        key_ok = hmac.compare_digest(api_key.encode(), self._config.api_key.encode())
        return id_ok and key_ok

    def mint(self, account: str, now: float) -> str | Throttled:
        """A new token for ``account``, unless the mint limit refuses it."""
        wait_s = _admit(self._account(account).mints, now, MINT_LIMIT, MINT_WINDOW_S)
        if wait_s is not None:
            message = f"at most {MINT_LIMIT} tokens per {MINT_WINDOW_S // 60} minutes"
            return self._throttled(message, wait_s)
        self._tokens = {t: held for t, held in self._tokens.items() if now < held.expires_at}
        token = secrets.token_urlsafe(32)
        self._tokens[token] = _Token(account, now + self._config.token_lifetime_s)
        _log.info("token minted for account %s", account)
        return token

    def _account(self, account: str) -> _Account:
        state = self._accounts.get(account)
        if state is None:
            state = self._accounts[account] = _Account()
        return state

    def _throttled(self, message: str, wait_s: float) -> Throttled:
        # Float rounding can leave a wait of 0, and a Retry-After of 0 asks for a retry that fails.
        return Throttled(message, max(1.0, wait_s) if self._config.retry_after else None)


def _admit(window: deque[float], now: float, limit: int, period_s: float) -> float | None:
    """Count one use in a rolling window of ``period_s``; None, or the seconds until a use frees."""
    while window and window[0] <= now - period_s:
        window.popleft()
    if len(window) >= limit:
        return window[0] + period_s - now
    window.append(now)
    return None


def _lower(labels: Iterable[str]) -> frozenset[str]:
    return frozenset(label.lower() for label in labels)
