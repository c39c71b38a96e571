"""Every account's token pool in this process (docs/design.md#auth), and the kinds of credentials
it is made with.

``Tokens`` makes an account's ``stream.pool.TokenPool`` the first time the account is asked for,
hands a usable token to the API client (the labels and batch-status endpoints), and says what the
pools need of the process (readiness, metrics). It follows the token slots this process holds
(``stream.leases``): when they change, each pool lets go of what is no longer its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from stream.config import Config
from stream.credentials import (
    CredentialsFile,
    CredentialSource,
    KeyPair,
    StaticTokens,
    TokenFileSource,
)
from stream.errors import AuthError
from stream.held import PoolReport
from stream.leases import KafkaLeases, Leases, LocalLeases
from stream.minting import MintBudget, Minter
from stream.pool import CHECK_S, TokenPool
from stream.secrets import Secret
from stream.sharing import Sharing

__all__ = ["MintedTokens", "StaticToken", "TokenFile", "Tokens", "make_source", "make_tokens"]

_log = logging.getLogger("stream.tokens")

_SLOTS_WAIT_S = 30.0
"""How long ``Tokens.get`` waits for this process to hold any token slot before it says why there is
no token. At start-up the slots are read in within a second or two of the first record, and a
registry read that failed in that moment would leave the account's labels unconfirmed (probed one
record at a time) until the next refresh, minutes later (docs/design.md#labels)."""


class Tokens:
    """Every account's ``TokenPool`` in this process; also the API client's
    ``stream.api.TokenSource``."""

    def __init__(
        self,
        source: CredentialSource,
        *,
        minter: Minter | None = None,
        leases: Leases | None = None,
        requests_per_minute: float | None = None,
        wall: Callable[[], float] = time.time,
        backoff: tuple[float, float] = (0.5, 30.0),
        rng: random.Random | None = None,
        give_up_s: float = math.inf,
        budget: MintBudget | None = None,
        sharing: Sharing | None = None,
    ) -> None:
        """``give_up_s``: ``DCR_AUTH_GIVE_UP_S``, how long an account's credentials may be refused
        before its records are dead-lettered (``TokenPool.given_up``). ``sharing``: every replica
        sends on every token, claimed (``stream.sharing``)."""
        self._source = source
        self.sharing = sharing
        self._give_up_s = give_up_s
        self._minter = minter
        self._budget = budget or MintBudget()
        self.leases: Leases = leases if leases is not None else LocalLeases(self._budget.mints)
        self._rpm = requests_per_minute
        self._wall = wall
        self._backoff = backoff
        """Base and cap (seconds) of a token's backoff after a 429, and of mints that fail."""
        self._rng = rng or random.Random()
        self._pools: dict[str, TokenPool] = {}
        self.leases.watch(self._leases_changed)
        self.leases.on_release(self._released)
        if sharing is not None:
            sharing.listen(want=self._wanted, grant=self._granted, record=self._recorded)

    def __repr__(self) -> str:
        return f"Tokens({self._source!r}, leases={self.leases!r})"

    def pool(self, account: str) -> TokenPool:
        pool = self._pools.get(account)
        if pool is None:
            pool = self._pools[account] = TokenPool(
                account,
                source=self._source,
                minter=self._minter,
                leases=self.leases,
                requests_per_minute=self._rpm,
                wall=self._wall,
                backoff=self._backoff,
                rng=self._rng,
                give_up_s=self._give_up_s,
                budget=self._budget,
                sharing=self.sharing,
            )
        pool.start()
        return pool

    async def get(self, account: str) -> str:
        """Any usable token of the account's pool (unpaced: for the labels endpoint)."""
        pool = self.pool(account)
        loop = asyncio.get_running_loop()
        slots_by = loop.time() + _SLOTS_WAIT_S
        while not pool.held:
            pool.want_more()
            pool.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pool.changed.wait(), CHECK_S)
            if pool.held or (not self.leases.owned() and loop.time() < slots_by):
                continue  # no slot yet (start-up, a rebalance): they come within seconds
            if pool.waiting is not None or pool.given_up():
                raise AuthError(account, pool.waiting or "credentials refused")
        return next(iter(pool.held.values())).token.reveal()

    def invalidate(self, account: str, token: str) -> None:
        pool = self._pools.get(account)
        if pool is None:
            return
        for held in list(pool.held.values()):
            if held.token.reveal() == token:
                pool.refused(held, asyncio.get_running_loop().time())

    def forbidden(self, account: str, endpoint: str) -> None:
        """A 403 from ``endpoint`` (``labels``, ``status``) is a permission answer about what was
        asked, not a dead token: it is counted and said once, and the token kept
        (docs/design.md#auth)."""
        pool = self.pool(account)
        pool.forbidden[endpoint] = count = pool.forbidden.get(endpoint, 0) + 1
        if count == 1:
            _log.warning(
                "account %s: the %s endpoint answered 403 (not permitted); the token is kept",
                account,
                endpoint,
            )

    @property
    def mint_count(self) -> int:
        """Answers from the token endpoint, refusals included (``dcr_token_refreshes_total``)."""
        return sum(p.mints + p.mints_refused for p in self._pools.values())

    def report(self) -> dict[str, PoolReport]:
        return {account: pool.report() for account, pool in sorted(self._pools.items())}

    def unready(self) -> str | None:
        """Why this process cannot send (readiness), or None: it holds no token slot, or an
        account it has records for has no token to send on."""
        if not self.leases.owned() and self.sharing is None:
            return "this replica holds no slot of the token pool"
        for account, pool in sorted(self._pools.items()):
            # An account given up on is dead-lettered, not waited for: one customer's revoked key
            # does not take the replica out of service (``refused`` names it).
            if not pool.held and pool.waiting is not None and not pool.given_up():
                return f"account {account} has no token to send on: {pool.waiting}"
        return None

    def refused(self) -> list[str]:
        """The accounts whose records are dead-lettered as ``auth_refused`` now."""
        return [account for account, pool in sorted(self._pools.items()) if pool.given_up()]

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()

    def _leases_changed(self) -> None:
        for pool in self._pools.values():
            pool.let_go(self.leases.owned())
            # Why it had no token was said of the slots held before ("this process holds no
            # slot" at start-up): ``get`` must not answer that once slots came (B6: every
            # account's first label read failed so).
            pool.waiting = None
            pool.wake()

    def _wanted(self, account: str) -> None:
        """Another replica waits for more of ``account``'s tokens: the slots held here without
        one mint one (sharing)."""
        if self.leases.owned():
            self.pool(account).want_more(elsewhere=True)

    def _granted(self, account: str, token: int, next_s: float) -> None:
        """A request was granted on a token (by any replica): nothing more goes on it before its
        next bucket, ``next_s`` from now."""
        pool = self._pools.get(account)
        held = pool.held.get(token) if pool is not None else None
        if held is not None:
            held.pace.hold(asyncio.get_running_loop().time() + next_s)

    def _recorded(self, account: str) -> None:
        """A slot's record of ``account`` changed (a token minted elsewhere, say)."""
        pool = self._pools.get(account)
        if pool is not None:
            pool.wake()

    def _released(self, gone: frozenset[int]) -> list[tuple[str, int, bytes]]:
        """Slots this process lets go: no request goes out on their tokens from now on, and what
        their next holders need to go on at once is returned, to be written before they get them."""
        return [
            (account, slot, record)
            for account, pool in self._pools.items()
            for slot, record in pool.release(gone)
        ]


class StaticToken(Tokens):
    """Tokens from one static token (what ``DCR_API_TOKEN`` with one token makes)."""

    def __init__(self, token: Secret, **options: Any) -> None:
        super().__init__(StaticTokens((token,)), **options)


class TokenFile(Tokens):
    """Tokens from a token file (``DCR_API_TOKEN_FILE``)."""

    def __init__(self, path: str, **options: Any) -> None:
        super().__init__(TokenFileSource(path), **options)


class MintedTokens(Tokens):
    """Tokens minted from one key pair (``DCR_API_KEY_ID`` + ``DCR_API_KEY``)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        key_id: str,
        api_key: Secret,
        **options: Any,
    ) -> None:
        minter = Minter(session, base_url=base_url)
        super().__init__(KeyPair(key_id, api_key), minter=minter, **options)


def make_tokens(
    config: Config,
    session: Any,
    leases: Leases | None,
    rng: random.Random | None = None,
    sharing: Sharing | None = None,
) -> Tokens:
    """Each account's token pool, from the one way to authenticate configured (``leases`` None:
    every slot held here, for a tool such as ``dcr-stream status``)."""
    return Tokens(
        make_source(config),
        minter=Minter(session, base_url=config.api_base_url),
        leases=leases,
        requests_per_minute=config.token_requests_per_minute,
        backoff=(config.retry_base_ms / 1000, config.retry_cap_ms / 1000),
        rng=rng,
        give_up_s=config.auth_give_up_s,
        budget=config.minting,
        sharing=sharing,
    )


async def start_slots(
    config: Config,
    consumer_config: dict[str, Any],
    client_config: dict[str, Any],
    loop: asyncio.AbstractEventLoop,
) -> tuple[KafkaLeases, Sharing | None]:
    """The token slots leased through Kafka and, with ``DCR_TOKEN_SHARING=on``, the claims that
    share their tokens between the replicas; both started."""
    leases = KafkaLeases(
        consumer_config,
        client_config,
        topic=config.token_topic,
        group_id=f"{config.kafka_group_id}.tokens",
        slots=config.token_pool_size,
        loop=loop,
    )
    await leases.start()
    if not config.token_sharing:
        return leases, None
    sharing = Sharing(
        consumer_config,
        client_config,
        topic=f"{config.token_topic}.claims",
        slots=leases.spec,
        requests_per_minute=config.token_requests_per_minute,
        loop=loop,
    )
    await sharing.start()
    return leases, sharing


def make_source(config: Config) -> CredentialSource:
    """The one way to authenticate configured."""
    if config.api_token is not None:
        tokens = [t.strip() for t in config.api_token.reveal().split(",") if t.strip()]
        return StaticTokens([Secret(t) for t in tokens])
    if config.api_token_file is not None:
        return TokenFileSource(config.api_token_file)
    if config.api_credentials_file is not None:
        return CredentialsFile(config.api_credentials_file)
    assert config.api_key_id is not None
    assert config.api_key is not None
    return KeyPair(config.api_key_id, config.api_key)
