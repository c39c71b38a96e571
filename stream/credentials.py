"""Where an account's API credentials come from (docs/design.md#auth), one kind per process:

- static tokens (``DCR_API_TOKEN``, comma-separated), the same for every account;
- a token file (``DCR_API_TOKEN_FILE``, one token per line), re-read when it changes;
- a key pair (``DCR_API_KEY_ID`` + ``DCR_API_KEY``) to mint tokens with, for every account;
- a credentials file (``DCR_API_CREDENTIALS_FILE``, JSON or TOML): per account a key pair or a list
  of tokens, re-read when it changes.

A source only reads: minting is ``stream.minting``, the pool that uses both ``stream.pool``.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from stream.errors import AuthError
from stream.secrets import Secret

__all__ = [
    "CredentialSource",
    "Credentials",
    "CredentialsFile",
    "KeyPair",
    "StaticTokens",
    "TokenFileSource",
    "parse_credentials",
]


@dataclass(frozen=True, slots=True)
class Credentials:
    """An account's credentials: tokens to use as they are, or a key pair to mint with."""

    tokens: tuple[Secret, ...] = ()
    key_id: str | None = None
    api_key: Secret | None = None


class CredentialSource(Protocol):
    def credentials(self, account: str) -> Credentials:
        """The account's credentials now; ``AuthError`` if there are none."""
        ...

    def reload(self) -> None:
        """Read again at the next call (a token was refused: it may have been rotated)."""
        ...

    def changed(self) -> bool:
        """Whether the credentials may have changed since last read (one ``stat``: asked before
        every request, so a rotated token is used from the next request on)."""
        ...


class StaticTokens:
    """``DCR_API_TOKEN``: tokens for every account; nothing to reload."""

    def __init__(self, tokens: Sequence[Secret]) -> None:
        self._credentials = Credentials(tokens=tuple(tokens))

    def __repr__(self) -> str:
        return f"StaticTokens({len(self._credentials.tokens)} tokens)"

    def credentials(self, account: str) -> Credentials:
        return self._credentials

    def reload(self) -> None:
        """Nothing to reload."""

    def changed(self) -> bool:
        return False


class KeyPair:
    """``DCR_API_KEY_ID`` + ``DCR_API_KEY``: one key pair, for every account."""

    def __init__(self, key_id: str, api_key: Secret) -> None:
        self._credentials = Credentials(key_id=key_id, api_key=api_key)

    def __repr__(self) -> str:
        return f"KeyPair(key_id={self._credentials.key_id!r})"

    def credentials(self, account: str) -> Credentials:
        return self._credentials

    def reload(self) -> None:
        """Nothing to reload."""

    def changed(self) -> bool:
        return False


class _WatchedFile:
    """A file read again whenever its identity, modification time or size changes. Kubernetes
    rotates a mounted secret by swapping a symlink, so the inode is compared, not only the time."""

    def __init__(self, path: str, parse: Callable[[str], Any]) -> None:
        self.path = path
        self._parse = parse
        self._seen: tuple[int, int, int] | None = None
        self._value: Any = None

    def read(self, account: str) -> Any:
        try:
            info = os.stat(self.path)
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
            if stamp != self._seen:
                # A few bytes, read only when the file changed: not worth a thread hop.
                with open(self.path, encoding="utf-8") as f:
                    self._value = self._parse(f.read())
                self._seen = stamp
        except OSError as exc:
            raise AuthError(account, f"cannot read {self.path}: {exc.strerror}") from None
        except ValueError as exc:
            raise AuthError(account, f"{self.path}: {exc}") from None
        return self._value

    def forget(self) -> None:
        self._seen = None

    def changed(self) -> bool:
        try:
            info = os.stat(self.path)
        except OSError:
            return True
        return (info.st_ino, info.st_mtime_ns, info.st_size) != self._seen


def _token_lines(text: str) -> tuple[Secret, ...]:
    return tuple(Secret(line.strip()) for line in text.splitlines() if line.strip())


class TokenFileSource:
    """``DCR_API_TOKEN_FILE``: one token per line, for every account, re-read when it changes."""

    def __init__(self, path: str) -> None:
        self._file = _WatchedFile(path, _token_lines)

    def __repr__(self) -> str:
        return f"TokenFileSource({self._file.path!r})"

    def credentials(self, account: str) -> Credentials:
        tokens = self._file.read(account)
        if not tokens:
            raise AuthError(account, f"the token file {self._file.path} is empty")
        return Credentials(tokens=tokens)

    def reload(self) -> None:
        self._file.forget()

    def changed(self) -> bool:
        return self._file.changed()


def parse_credentials(text: str) -> dict[str, Credentials]:
    """A credentials file: JSON or TOML, account → ``{key_id, api_key}`` or ``{tokens: [...]}``.

    Errors name the account and the field, never a value (they may be secrets).
    """
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"neither JSON nor TOML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError("must map account ids to credentials")
    accounts: dict[str, Credentials] = {}
    for account, entry in data.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{account}: must be {{key_id, api_key}} or {{tokens}}")
        tokens = entry.get("tokens")
        key_id, api_key = entry.get("key_id"), entry.get("api_key")
        if tokens is not None and (key_id is not None or api_key is not None):
            raise ValueError(f"{account}: either tokens or key_id + api_key, not both")
        if tokens is not None:
            if not isinstance(tokens, list) or not tokens:
                raise ValueError(f"{account}: tokens must be a list of at least one token")
            if not all(isinstance(t, str) and t.strip() for t in tokens):
                raise ValueError(f"{account}: every token must be a non-empty string")
            accounts[account.lower()] = Credentials(tokens=tuple(Secret(t.strip()) for t in tokens))
        elif isinstance(key_id, str) and key_id and isinstance(api_key, str) and api_key:
            accounts[account.lower()] = Credentials(key_id=key_id, api_key=Secret(api_key))
        else:
            raise ValueError(f"{account}: key_id and api_key must both be non-empty strings")
    return accounts


class CredentialsFile:
    """``DCR_API_CREDENTIALS_FILE``: per account a key pair or tokens, re-read when it changes."""

    def __init__(self, path: str) -> None:
        self._file = _WatchedFile(path, parse_credentials)

    def __repr__(self) -> str:
        return f"CredentialsFile({self._file.path!r})"

    def credentials(self, account: str) -> Credentials:
        accounts: dict[str, Credentials] = self._file.read(account)
        found = accounts.get(account)
        if found is None:
            raise AuthError(
                account, f"no credentials for this account in {self._file.path}", refused=True
            )
        return found

    def reload(self) -> None:
        self._file.forget()

    def changed(self) -> bool:
        return self._file.changed()
