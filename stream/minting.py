"""Minting tokens and remembering them (docs/api.md#tokens, docs/design.md#auth).

``Minter`` asks the token endpoint for a token with a key pair. Each token slot remembers its mints
and its token in a ``SlotRecord`` (kept in Kafka by ``stream.leases``): a mint is written there
before it is asked for, so a crash cannot hide it from the budget, and the token after, sealed
with a key derived from the account's API key (``seal``), so the slot's next holder reuses it and
a tool (``dcr-stream status``) can read a live one (``live_token``) instead of spending a mint.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from stream.errors import AuthError
from stream.secrets import Secret
from stream.wire import parse_retry_after

__all__ = [
    "MAX_MINTS",
    "MINT_WINDOW_S",
    "REFRESH_MARGIN_S",
    "TOKEN_LIFETIME_S",
    "MintBudget",
    "Minter",
    "SlotRecord",
    "decode",
    "encode",
    "live_token",
    "read_record",
    "seal",
    "unseal",
]

TOKEN_LIFETIME_S = 3600.0
"""The API's documented token lifetime (60 minutes)."""

REFRESH_MARGIN_S = 600.0
"""Mint a new token this long before the old one expires, so no request races the expiry."""

MAX_MINTS = 10
MINT_WINDOW_S = 1800.0
"""The API allows at most 10 mints per 30 minutes (per account)."""

_WINDOW_MARGIN_S = 10.0
"""A slot's mint budget counts its window this much longer (at most a 60th of it), for the API's
clock."""


@dataclass(frozen=True, slots=True)
class MintBudget:
    """The API's numbers a pool of minted tokens lives by: a token's lifetime
    (``DCR_TOKEN_LIFETIME_S``) and the account's mints per window (``DCR_MINT_BUDGET`` per
    ``DCR_MINT_WINDOW_S``). The defaults are the documented ones (docs/api.md#tokens); a test runs
    a day of token generations in minutes by scaling them down with the sandbox's."""

    lifetime_s: float = TOKEN_LIFETIME_S
    mints: int = MAX_MINTS
    window_s: float = MINT_WINDOW_S

    @property
    def refresh_after_s(self) -> float:
        """A token's age at which its slot mints the next one: ``REFRESH_MARGIN_S`` before it
        ends, or a sixth of its life before, for tokens that live less than an hour."""
        return self.lifetime_s - min(REFRESH_MARGIN_S, self.lifetime_s / 6)

    def per_slot(self, slots: int) -> int:
        """Mints each of ``slots`` slots may spend per window: together never over the budget."""
        return max(1, self.mints // min(slots, self.mints))

    def recent(self, mints: Sequence[float], now: float) -> list[float]:
        """The mints (wall times) that still count against the budget at ``now``."""
        return [t for t in mints if now - t < self._counted_s]

    def allowed_at(self, recent: Sequence[float], per_slot: int) -> float:
        """When a slot with these ``recent`` mints may mint again (0: now)."""
        return recent[-per_slot] + self._counted_s if len(recent) >= per_slot else 0.0

    @property
    def _counted_s(self) -> float:
        return self.window_s + min(_WINDOW_MARGIN_S, self.window_s / 60)

    def __str__(self) -> str:
        return f"{self.mints} per {self.window_s:g} s"


class Minter:
    """``POST {base}/clients/{id}/token`` (docs/api.md#tokens)."""

    def __init__(self, session: aiohttp.ClientSession, *, base_url: str) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")

    def __repr__(self) -> str:
        return f"Minter(base_url={self._base_url!r})"

    async def mint(self, account: str, key_id: str, api_key: Secret) -> str:
        """A new token; ``AuthError`` (with the status and ``Retry-After``) if none was had."""
        url = f"{self._base_url}/clients/{account}/token"
        body = {"key_id": key_id, "api_key": api_key.reveal()}
        try:
            async with self._session.post(
                url, json=body, headers={"X-Public-Access": "allow"}
            ) as response:
                payload = await response.read()
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except aiohttp.ClientConnectorError as exc:
            reason = f"token endpoint unreachable: {type(exc).__name__}"
            raise AuthError(account, reason, reached=False) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AuthError(account, f"token endpoint failed: {type(exc).__name__}") from None
        if status // 100 != 2:
            raise AuthError(
                account,
                f"token endpoint answered {status}",
                status=status,
                retry_after_s=retry_after,
            )
        try:
            token = json.loads(payload)["token"]
        except (ValueError, KeyError, TypeError):
            raise AuthError(account, "token endpoint answered without a token") from None
        if not isinstance(token, str) or not token:
            raise AuthError(account, "token endpoint answered without a token")
        return token


class SlotRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a slot remembers (``stream.leases``), written before and after each mint."""

    mints: list[float] = []
    """Wall times (epoch s) of the mints that may have happened within the budget's window: a mint
    is written here *before* it is asked for, so a crash cannot hide it."""
    token: str | None = None
    """The slot's token, sealed (``_seal``)."""
    minted_at: float | None = None
    """Wall time the sealed token was minted."""
    released_at: float | None = None
    """Set by a holder that let the slot go (a rebalance, a stop): it sent nothing on the token
    since, and ``sent`` is its history. Cleared by the next holder before it sends."""
    sent: list[float] = []
    """Wall times of the requests the last holder sent on the token within its last minute."""


_records = msgspec.json.Decoder(SlotRecord)


def encode(record: SlotRecord) -> bytes:
    return msgspec.json.encode(record)


def decode(raw: bytes) -> SlotRecord:
    """A slot's record; ``msgspec.DecodeError`` if it is not one."""
    return _records.decode(raw)


def read_record(raw: bytes | None) -> SlotRecord:
    """A slot's record, or an empty one if there is none or it is not one."""
    if raw is None:
        return SlotRecord()
    try:
        return decode(raw)
    except msgspec.DecodeError:
        return SlotRecord()


def _key(account: str, api_key: Secret) -> AESGCM:
    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=b"dcr-stream token slots",
        info=account.encode(),
    ).derive(api_key.reveal().encode())
    return AESGCM(derived)


def seal(account: str, slot: int, api_key: Secret, token: str) -> str:
    """AES-GCM with a key derived (HKDF) from the account's API key, bound to the account and slot:
    only a holder of the same key can read it, and a record moved elsewhere does not open."""
    nonce = os.urandom(12)
    sealed = _key(account, api_key).encrypt(nonce, token.encode(), f"{account}/{slot}".encode())
    return base64.b64encode(nonce + sealed).decode()


def unseal(account: str, slot: int, api_key: Secret, sealed: str) -> str | None:
    try:
        raw = base64.b64decode(sealed)
        opened = _key(account, api_key).decrypt(raw[:12], raw[12:], f"{account}/{slot}".encode())
    except (ValueError, InvalidTag):
        return None  # another key (rotated), or not ours: mint instead
    return opened.decode()


def live_token(
    account: str,
    api_key: Secret,
    records: Mapping[tuple[str, int], bytes],
    wall_s: float,
    budget: MintBudget | None = None,
) -> str | None:
    """A token the service's slots hold for ``account`` and that has its refresh margin left, if
    any: a tool reads it rather than spend a mint (docs/design.md#auth)."""
    for (owner, slot), raw in sorted(records.items()):
        if owner != account:
            continue
        try:
            record = decode(raw)
        except msgspec.DecodeError:
            continue
        if record.token is None or record.minted_at is None:
            continue
        if wall_s < record.minted_at + (budget or MintBudget()).refresh_after_s:
            token = unseal(account, slot, api_key, record.token)
            if token is not None:
                return token
    return None
