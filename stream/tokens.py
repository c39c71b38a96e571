"""API tokens (docs/api.md, docs/design.md#auth): static, from a file Kubernetes rotates, or minted.

Every source answers ``await get(account)`` with a bearer token and hears
``invalidate(account, token)`` when the API refused it (401, or a first 403). Tokens and keys are
held in ``Secret``, whose repr never shows them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import aiohttp

from stream.errors import AuthError

__all__ = ["MintedTokens", "Secret", "StaticToken", "TokenFile", "TokenSource"]

TOKEN_LIFETIME_S = 3600.0
"""The API's documented token lifetime (60 minutes)."""

REFRESH_MARGIN_S = 600.0
"""Mint a new token this long before the old one expires, so no request races the expiry."""

MAX_MINTS = 10
MINT_WINDOW_S = 1800.0
"""The API allows at most 10 mints per 30 minutes (per account)."""


class Secret:
    """A string that never shows itself in logs, reprs or exception text."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class TokenSource(Protocol):
    async def get(self, account: str) -> str: ...

    def invalidate(self, account: str, token: str) -> None: ...


class StaticToken:
    """``DCR_API_TOKEN``: one token for every account; a refusal cannot be mended by reloading."""

    def __init__(self, token: Secret) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(********)"

    async def get(self, account: str) -> str:
        return self._token.reveal()

    def invalidate(self, account: str, token: str) -> None:
        """Nothing to reload; the caller backs off and retries."""


class TokenFile:
    """``DCR_API_TOKEN_FILE``: re-read whenever the file changes and after a refusal.

    Kubernetes rotates a mounted secret by swapping a symlink, so the file's identity (inode) is
    part of what is compared, not only its modification time.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._seen: tuple[int, int, int] | None = None
        self._token = ""

    def __repr__(self) -> str:
        return f"TokenFile({self._path!r})"

    async def get(self, account: str) -> str:
        try:
            info = os.stat(self._path)
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
            if stamp != self._seen:
                # A few bytes, read only when the file changed: not worth a thread hop.
                with open(self._path, encoding="utf-8") as f:  # noqa: ASYNC230
                    self._token = f.read().strip()
                self._seen = stamp
        except OSError as exc:
            raise AuthError(account, f"cannot read the token file {self._path}: {exc}") from None
        if not self._token:
            raise AuthError(account, f"the token file {self._path} is empty")
        return self._token

    def invalidate(self, account: str, token: str) -> None:
        self._seen = None


class MintedTokens:
    """``DCR_API_KEY_ID`` + ``DCR_API_KEY``: a token per account from the token endpoint, minted on
    first use, ``REFRESH_MARGIN_S`` before expiry and after a refusal, never more than ``MAX_MINTS``
    per ``MINT_WINDOW_S`` (past that, the current token is kept, or we wait for the window).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        key_id: str,
        api_key: Secret,
        lifetime_s: float = TOKEN_LIFETIME_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._key_id = key_id
        self._api_key = api_key
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}
        """account → (token, minted at)"""
        self._mints: dict[str, deque[float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.mint_count = 0
        """Tokens minted since start (a metric)."""

    def __repr__(self) -> str:
        return f"MintedTokens(base_url={self._base_url!r}, key_id={self._key_id!r})"

    async def get(self, account: str) -> str:
        held = self._tokens.get(account)
        if held is not None and self._clock() - held[1] < self._lifetime_s - REFRESH_MARGIN_S:
            return held[0]
        async with self._locks.setdefault(account, asyncio.Lock()):
            held = self._tokens.get(account)  # another task may have minted while we waited
            now = self._clock()
            if held is not None and now - held[1] < self._lifetime_s - REFRESH_MARGIN_S:
                return held[0]
            mints = self._mints.setdefault(account, deque())
            while mints and now - mints[0] >= MINT_WINDOW_S:
                mints.popleft()
            if len(mints) >= MAX_MINTS:
                if held is not None and now - held[1] < self._lifetime_s:
                    return held[0]  # still valid: better than breaking the API's mint limit
                await asyncio.sleep(mints[0] + MINT_WINDOW_S - now)
                mints.popleft()
            token = await self._mint(account)
            mints.append(self._clock())
            self._tokens[account] = (token, self._clock())
            return token

    def invalidate(self, account: str, token: str) -> None:
        """Forget a refused token: the next ``get`` mints, or waits for the mint window."""
        held = self._tokens.get(account)
        if held is not None and held[0] == token:
            del self._tokens[account]

    async def _mint(self, account: str) -> str:
        url = f"{self._base_url}/clients/{account}/token"
        body = {"key_id": self._key_id, "api_key": self._api_key.reveal()}
        try:
            async with self._session.post(
                url, json=body, headers={"X-Public-Access": "allow"}
            ) as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AuthError(account, f"token endpoint unreachable: {type(exc).__name__}") from None
        self.mint_count += 1
        if status // 100 != 2:
            raise AuthError(account, f"token endpoint answered {status}", status=status)
        try:
            token = json.loads(payload)["token"]
        except (ValueError, KeyError, TypeError):
            raise AuthError(account, "token endpoint answered without a token") from None
        if not isinstance(token, str) or not token:
            raise AuthError(account, "token endpoint answered without a token")
        return token
