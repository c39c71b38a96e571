"""One account's pool of API tokens in this process (docs/design.md#auth).

A held token slot (``stream.leases``) gives a token to send on (``Held``), paced on its own
(``stream.pacing.Pace``). With static tokens slot ``i`` is token ``i`` (or a share of one, when
there are fewer tokens than slots). With a key pair the slot's holder mints its token
(``stream.minting``) as demand asks for more, and again before it expires. Each of ``n`` slots may
mint ``budget // n`` times per window (``stream.minting.MintBudget``): the account never exceeds the
API's 10 per 30 minutes, however many replicas hold its slots, however often they move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from stream.credentials import CredentialSource
from stream.errors import AuthError
from stream.held import Held, PoolReport, handed_over, static_shares
from stream.leases import Leases
from stream.minting import MintBudget, Minter, SlotRecord, encode, read_record, seal, unseal
from stream.pacing import Pace, Slots
from stream.secrets import Secret
from stream.sharing import Sharing

__all__ = ["CHECK_S", "TokenPool"]

_log = logging.getLogger("stream.tokens")

_HELD_BACK_LOG_S = 60.0
"""Why an account waits for a token is logged at most this often."""

_REFUSED_RETRY_S = 60.0
"""A slot whose mint was refused without ``Retry-After`` tries again this much later."""

CHECK_S = 1.0
"""A pool looks at its slots (and credential files) at least this often."""

_CREDENTIALS_REFUSED = frozenset({400, 401, 403, 404})
"""Answers of the token endpoint that refuse the credentials themselves (a key not yet issued, a
revoked one, an unknown account), unlike 429 (the budget) or 5xx (the API)."""


class TokenPool:
    """One account's tokens in this process (see the module's docstring)."""

    def __init__(
        self,
        account: str,
        *,
        source: CredentialSource,
        minter: Minter | None,
        leases: Leases,
        requests_per_minute: float | None,
        wall: Callable[[], float],
        backoff: tuple[float, float],
        rng: random.Random,
        give_up_s: float = math.inf,
        budget: MintBudget | None = None,
        sharing: Sharing | None = None,
    ) -> None:
        """``sharing``: every replica sends on every token of the account, each batch request
        claimed (``stream.sharing``); None: only on the tokens of the slots this process holds."""
        self.account = account
        self.sharing = sharing
        self._budget = budget or MintBudget()
        self._source = source
        self._minter = minter
        self._leases = leases
        self._rpm = requests_per_minute
        self._wall = wall
        self._backoff = backoff
        self._rng = rng
        self.held: dict[int, Held] = {}
        self.changed = asyncio.Event()
        """Set when a token becomes usable."""
        self._wake = asyncio.Event()
        self._asked = False
        """A sender waits for the tokens held (or has none): mint one more (minted tokens)."""
        self._every = False
        """Another replica waits: mint for every empty slot held here (token sharing)."""
        self._next_mint = 0.0
        """Wall time before which no slot tries to mint: the API refused a mint (the account's
        budget is spent, whoever spent it) or could not be asked."""
        self._refused: set[int] = set()
        self._spent: set[tuple[int, float | None]] = set()
        """Tokens minted elsewhere that the API refused: (slot, when minted)."""
        self._tokens: tuple[Secret, ...] = ()
        """The static tokens last read (none: minted tokens)."""
        self._refusal: str | None = None
        """The last mint refusal, said while ``_next_mint`` holds mints back."""
        self._requests: dict[int, int] = {}
        self.mints = 0
        self.mints_refused = 0
        self.mints_throttled = 0
        self.mints_held_back = 0
        self.forbidden: dict[str, int] = {}
        """Endpoint (``labels``, ``status``) → 403s on a kept token (``Tokens.forbidden``)."""
        self._held_back_seen: set[tuple[int, float]] = set()
        self.waiting: str | None = None
        self.failing: str | None = None
        """Why the last attempt to get a token failed without an answer from the API (the token
        endpoint unreachable, TLS refused, a credentials file unreadable), until one succeeds."""
        self._failures = 0
        self._logged_at = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._give_up_s = give_up_s
        self.refused_since: float | None = None
        """Wall time since which the account's credentials have been refused (the token endpoint
        answered 400/401/403/404, or no configured credential covers the account), until a token
        is had or the credentials change (docs/design.md#auth)."""

    def __repr__(self) -> str:
        return f"TokenPool({self.account!r}, {len(self.held)} held)"

    def settled(self) -> bool:  # the slots were handed out once since start
        return self._leases.settled

    def given_up(self) -> bool:
        """Whether the account's credentials have been refused for ``DCR_AUTH_GIVE_UP_S``: its
        records are dead-lettered as ``auth_refused`` instead of waiting (docs/design.md#auth)."""
        since = self.refused_since
        return not self.held and since is not None and self._wall() - since >= self._give_up_s

    def _credentials_refused(self) -> None:
        if self.refused_since is None:
            self.refused_since = self._wall()

    # -- the sender's side --------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def usable(self) -> list[Held]:
        self.start()
        if self._source.changed():
            self._reread()
        return list(self.held.values())

    def _reread(self) -> None:
        """A credentials file changed: take its static tokens now (a key pair at the next look)."""
        try:
            credentials = self._source.credentials(self.account)
        except AuthError:
            return  # the next look says why
        if credentials.tokens and self._leases.owned():
            self._sync_static(credentials.tokens, self._leases.owned())
        # New credentials: tried at once, whatever the old ones earned.
        self.refused_since, self._next_mint = None, 0.0
        self._wake.set()

    def want_more(self, *, elsewhere: bool = False) -> None:
        """Sending waits for the tokens held: one more would help. Minted tokens are minted on
        demand, one per ask, so an account that sends little holds few (and spends few mints).
        ``elsewhere``: another replica waits (it says so at most once a second): every slot held
        here without a token mints one."""
        if self.sharing is not None and not elsewhere:
            self.sharing.want(self.account)
        self._every = self._every or elsewhere
        if not self._asked:
            self._asked = True
            self._wake.set()

    def used(self, held: Held, now: float) -> None:
        held.pace.take(now)
        self._requests[held.index] = self._requests.get(held.index, 0) + 1

    async def claim(self, held: Held) -> float:
        """Claim the request just taken on ``held`` (sharing): 0: it may go; else ``used`` is
        undone and the token waits for its next bucket, as returned."""
        assert self.sharing is not None
        wait_s = await self.sharing.claim(self.account, held.index)
        if wait_s > 0:
            held.pace.untake()
            self._requests[held.index] -= 1
            held.pace.hold(asyncio.get_running_loop().time() + wait_s)
        return wait_s

    def throttled(self, held: Held, now: float, retry_after_s: float | None) -> float:
        """A 429 on ``held``: it alone backs off; returns for how long."""
        return held.pace.throttled(now, retry_after_s, self._backoff, self._rng)

    def refused(self, held: Held, now: float) -> None:
        """A 401 (or a first 403) for ``held``: a minted token is replaced; a static one backs off
        (it cannot be mended here) while its source is read again (it may have been rotated)."""
        if held.elsewhere:  # its holder mints the next one; this one is not taken again
            self._spent.add((held.index, held.minted_at))
            if self.held.get(held.index) is held:
                del self.held[held.index]
        elif held.minted_at is not None:
            if self.held.get(held.index) is held:
                del self.held[held.index]
            self._refused.add(held.index)
        else:
            held.pace.throttled(now, None, self._backoff, self._rng)
            self._source.reload()
        self._wake.set()

    def report(self) -> PoolReport:
        return PoolReport(
            live=len(self.held),
            slots=len(self._leases.owned()),
            mints=self.mints,
            mints_refused=self.mints_refused,
            mints_throttled=self.mints_throttled,
            mints_held_back=self.mints_held_back,
            forbidden=dict(self.forbidden),
            requests=dict(self._requests),
            waiting=None if self.held else (self.waiting or "no token yet"),
            auth_refused=int(self.given_up()),
        )

    def wake(self) -> None:
        self._wake.set()

    def let_go(self, owned: frozenset[int]) -> None:
        """The slots held changed: no request goes out on a token of a slot let go, from now on
        (the static tokens' shares are worked out again at once)."""
        if self._tokens:
            self._sync_static(self._tokens, owned)
        else:
            for p in [p for p in self.held if p not in owned and not self.held[p].elsewhere]:
                del self.held[p]

    # -- keeping the slots --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._sync()
            except Exception:  # a bug must not end the pool: its sends would wait forever
                _log.exception("account %s: keeping the token pool failed", self.account)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that comes
            # as the wake is set (the pool then outlives close(), and a stop waits for it).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_S):
                    await self._wake.wait()

    async def _sync(self) -> None:
        try:
            credentials = self._source.credentials(self.account)
        except AuthError as exc:
            self.failing = str(exc)
            if exc.refused:  # no credential covers the account: the clock starts now
                self._credentials_refused()
            self._held_back(str(exc), None)
            return
        if credentials.tokens:
            self.failing = None
        owned = self._leases.owned()
        if not owned and self.sharing is None:
            self.held.clear()
            self._held_back("this process holds no slot of the token pool", None)
        elif credentials.tokens:
            self._sync_static(credentials.tokens, owned)
        elif credentials.key_id is not None and credentials.api_key is not None:
            await self._sync_minted(credentials.key_id, credentials.api_key, owned)
        if self.held:
            self.waiting, self.refused_since = None, None
            self.changed.set()

    def _sync_static(self, tokens: tuple[Secret, ...], owned: frozenset[int]) -> None:
        """Slot ``p`` of ``P`` holds tokens ``p, p + P, …``; with fewer tokens than slots, token
        ``i`` is shared by the slots ``i, i + T, …``, each holding an equal part of its rate."""
        self._tokens = tokens
        count = len(tokens)
        shares, owned_by = static_shares(count, self._leases.slots, owned)
        if self.sharing is not None:
            for i in range(count):  # every token, at its whole pace: the claims keep it
                shares.setdefault(i, 0.0)
        for i in [i for i in self.held if i not in shares]:
            del self.held[i]
        for i, share in shares.items():
            if self.sharing is not None:
                self._share_static(i, tokens[i], share)
                continue
            held = self.held.get(i)
            if held is not None and held.token != tokens[i]:
                held = None  # rotated: another token, whose history is not the old one's
            if held is None or held.share < share - 1e-9:
                # A slot nobody held before: nobody sent on its token lately.
                seed = not all(self._leases.fresh(p) for p in owned_by[i])
                self.held[i] = Held(i, tokens[i], self._pace(held, share, seed=seed), share)
            elif held.share != share:
                held.pace.slots = self._slots(share, held.pace.slots)
                held.share = share

    def _share_static(self, i: int, token: Secret, share: float) -> None:
        """Token ``i`` with sharing on: batches go on it at its whole pace, claimed; ``share`` (of
        the slots held here) is what urgent records may use of it."""
        held = self.held.get(i)
        if held is None or held.token != token:
            self.held[i] = held = Held(i, token, self._pace(None, 1.0, seed=False))
        held.share, held.elsewhere = share, share == 0.0

    def _sync_elsewhere(self, api_key: Secret, owned: frozenset[int], now: float) -> None:
        """With sharing on, the live tokens minted by the holders of the other slots."""
        assert self.sharing is not None
        budget = self._budget
        for p in range(min(budget.mints, self._leases.slots)):
            held = self.held.get(p)
            if p in owned:
                if held is not None and held.elsewhere:  # its slot is held here now
                    held.elsewhere, held.share = False, 1.0
                continue
            record = read_record(self.sharing.record(self.account, p))
            minted_at = record.minted_at
            if record.token is None or minted_at is None or now >= minted_at + budget.lifetime_s:
                self.held.pop(p, None)
                continue
            if (held is not None and held.minted_at == minted_at) or (p, minted_at) in self._spent:
                continue
            token = unseal(self.account, p, api_key, record.token)
            if token is not None:
                pace = self._pace(held, 1.0, seed=False)
                self.held[p] = Held(p, Secret(token), pace, 0.0, minted_at, elsewhere=True)

    async def _sync_minted(self, key_id: str, api_key: Secret, owned: frozenset[int]) -> None:
        assert self._minter is not None, "a key pair needs a Minter"
        account, now = self.account, self._wall()
        budget = self._budget
        mintable = sorted(p for p in owned if p < budget.mints)
        per_slot = budget.per_slot(self._leases.slots)
        for p in [p for p in self.held if p not in mintable and not self.held[p].elsewhere]:
            del self.held[p]
        if self.sharing is not None:
            self._sync_elsewhere(api_key, owned, now)
        for p in mintable:
            held = self.held.get(p)
            if held is not None and held.minted_at is not None:
                if now >= held.minted_at + budget.lifetime_s:
                    del self.held[p]
            elif p not in self._refused:
                record = self._record(p)
                alive = (
                    record.minted_at is not None and now < record.minted_at + budget.refresh_after_s
                )
                if record.token is not None and alive:
                    token = unseal(account, p, api_key, record.token)
                    if token is not None:
                        pace = await self._taken_over(p, record)
                        if pace is not None:
                            self.held[p] = Held(p, Secret(token), pace, 1.0, record.minted_at)
        due = [
            p
            for p, h in self.held.items()
            if h.minted_at is not None and now >= h.minted_at + budget.refresh_after_s
        ]
        empty = [p for p in mintable if p not in self.held] if self._asked else []
        minted_any = False
        earliest: float | None = None
        for p in due + empty:
            if p in empty and not self._asked:
                break
            record = self._record(p)
            recent = budget.recent(record.mints, now)
            allowed_at = max(self._next_mint, budget.allowed_at(recent, per_slot))
            if now < allowed_at:
                earliest = allowed_at if earliest is None else min(earliest, allowed_at)
                if (p, allowed_at) not in self._held_back_seen:
                    self._held_back_seen.add((p, allowed_at))
                    self.mints_held_back += 1
                continue
            if not await self._mint(p, key_id, api_key, record, recent):
                break  # refused or unanswered: the other slots would be too
            minted_any = True
            if p in empty and not self._every:
                self._asked = False
        self._asked = self._asked and not self._every
        self._every = False
        if not self.held and not minted_any and self._asked:
            refused = self._refusal if now < self._next_mint else None
            why = refused or f"every slot held here spent its mint budget ({budget})"
            if not mintable:
                why = "no token minted yet by the replicas that hold the token slots"
            self._held_back(why, earliest)

    async def _mint(
        self, p: int, key_id: str, api_key: Secret, record: SlotRecord, recent: list[float]
    ) -> bool:
        """Mint slot ``p``'s token: the mint is remembered first, the token after."""
        assert self._minter is not None
        account, now = self.account, self._wall()
        # Every write of this mint under the slot's generation now: once the slot moves on, the
        # next holder's record is its own (docs/design.md#scaling).
        generation = self._leases.generation(p)
        kept = SlotRecord(mints=recent, token=record.token, minted_at=record.minted_at)
        if not await self._leases.store(account, p, encode(SlotRecord(
            mints=[*recent, now], token=record.token, minted_at=record.minted_at
        )), generation=generation):  # fmt: skip
            return False
        try:
            token = await self._minter.mint(account, key_id, api_key)
        except AuthError as exc:
            if exc.status is not None or not exc.reached:
                # it cannot have minted
                await self._leases.store(account, p, encode(kept), generation=generation)
            if exc.status is not None:
                self.mints_refused += 1
                self.mints_throttled += exc.status == 429
                if exc.status in _CREDENTIALS_REFUSED:
                    self._credentials_refused()
                self.failing = None
                retry_s = exc.retry_after_s if exc.retry_after_s is not None else _REFUSED_RETRY_S
            else:  # no answer: tried again soon, with a backoff (its sends fail meanwhile)
                self.failing = str(exc)
                self._failures += 1
                base_s, cap_s = self._backoff
                retry_s = min(cap_s, base_s * 2 ** min(self._failures - 1, 30))
            self._next_mint = now + retry_s
            self._refusal = str(exc)
            self._held_back(str(exc), now + retry_s)
            return False
        self.mints += 1
        self.failing, self._failures = None, 0
        if not await self._leases.store(account, p, encode(SlotRecord(
            mints=[*recent, now], token=seal(account, p, api_key, token), minted_at=now
        )), generation=generation):  # fmt: skip
            _log.info("account %s: token slot %d moved on while minting; token dropped", account, p)
            return False
        previous = self.held.get(p)
        self.held[p] = Held(p, Secret(token), self._pace(previous, 1.0, seed=False), 1.0, now)
        self._refused.discard(p)
        _log.info("account %s: token slot %d minted a token", account, p)
        self.changed.set()
        return True

    async def _taken_over(self, p: int, record: SlotRecord) -> Pace | None:
        """The pace of a minted token this process takes over. If its last holder handed it over
        (``released_at``), its history goes on, once the record says the slot is taken again (a
        crash of this process then leaves the next holder assuming the worst). Otherwise whoever
        held it may have used its whole window (``Slots.seeded``). None if the slot moved on
        meanwhile."""
        if record.released_at is None or self._rpm is None:
            return self._pace(None, 1.0)
        taken = SlotRecord(mints=record.mints, token=record.token, minted_at=record.minted_at)
        generation = self._leases.generation(p)
        if not await self._leases.store(self.account, p, encode(taken), generation=generation):
            return None
        loop_now, wall_now = asyncio.get_running_loop().time(), self._wall()
        history = deque(loop_now - (wall_now - t) for t in sorted(record.sent))
        return Pace(Slots.per_minute(self._rpm, history))

    def release(self, gone: frozenset[int]) -> list[tuple[int, bytes]]:
        """The records to write for the minted tokens of slots this process lets go: each with
        its history, so that the next holder goes on at the token's pace without waiting."""
        loop_now, wall_now = asyncio.get_running_loop().time(), self._wall()
        out = []
        for p in sorted(gone):
            held = self.held.pop(p, None)
            if held is not None and held.minted_at is not None and held.pace.slots is not None:
                out.append((p, handed_over(held, self._record(p), wall_now, loop_now)))
        return out

    def _record(self, p: int) -> SlotRecord:
        return read_record(self._leases.record(self.account, p))

    def _slots(self, share: float, previous: Slots | None) -> Slots | None:
        if self._rpm is None:
            return None
        return Slots.per_minute(self._rpm * share, previous.sent if previous is not None else None)

    def _pace(self, previous: Held | None, share: float, *, seed: bool = True) -> Pace:
        """A pace for a token this process starts to use: its own history kept (the slot's, for a
        minted token), and, for a token someone else may have used until now, a full window
        assumed (``Slots.seeded``)."""
        slots = self._slots(share, previous.pace.slots if previous is not None else None)
        if slots is not None and seed:
            slots = slots.seeded(asyncio.get_running_loop().time())
        return Pace(slots)

    def _held_back(self, why: str, next_at: float | None) -> None:
        """No token to send on: say why, at most once a minute, with the next attempt's time."""
        when = "" if next_at is None else f"; next attempt at {_iso(next_at)}"
        self.waiting = why + when
        now = time.monotonic()
        if not self.held and now - self._logged_at >= _HELD_BACK_LOG_S:
            self._logged_at = now
            _log.warning("account %s has no token to send on: %s", self.account, self.waiting)


def _iso(wall_s: float) -> str:
    return datetime.fromtimestamp(wall_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
