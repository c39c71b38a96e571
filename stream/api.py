"""The Dynamic Call Records API over HTTP (docs/api.md): paths, headers, bodies, statuses.

One ``aiohttp.ClientSession`` per process (``stream.wire.make_session``), with explicit timeouts and
TLS verification on (an optional CA bundle for private CAs). A request never raises for an HTTP
status or a transport failure: both come back as a ``stream.wire.Response``. The client asks for
tokens through ``TokenSource`` (``stream.tokens.Tokens`` is one), and tells it what the API said of
them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp
import msgspec

from stream.errors import AuthError
from stream.wire import Response, parse_retry_after

__all__ = [
    "ApiClient",
    "BatchStatus",
    "Label",
    "RecordStatus",
    "StatusAnswer",
    "TokenSource",
    "parse_batch_id",
    "refused_field",
]

_ACCEPT = "application/vnd.api+json; version=1.0"


class _BatchId(msgspec.Struct):
    batch_id: str | None = None
    message: str | None = None


_batch_id = msgspec.json.Decoder(_BatchId)
_V1_BATCH_ID = re.compile(r"BatchID:\s*([0-9A-Za-z-]+)")


def parse_batch_id(payload: bytes) -> str | None:
    """The batch id of a 2xx batch answer: v2's ``batch_id``, or the id in v1's message text
    ("Records Uploaded Successfully. BatchID: <uuid>"); None when it holds neither."""
    try:
        answer = _batch_id.decode(payload)
    except msgspec.DecodeError:
        return None
    if answer.batch_id:
        return answer.batch_id
    found = _V1_BATCH_ID.search(answer.message or "")
    return found[1] if found else None


class _Refusal(msgspec.Struct):
    field: str | None = None


_refusal = msgspec.json.Decoder(_Refusal)


def refused_field(body: bytes) -> str | None:
    """The record field a refusal names in the documented ``{"field", "message", "status"}``
    shape (docs/api.md#errors), without a batch body's ``call_records[i].`` prefix; None for any
    other body (``{"slug", "message"}``, not JSON, no field). Words in a message are not read: they
    are not documented."""
    try:
        field = _refusal.decode(body).field
    except msgspec.DecodeError:
        return None
    return field.rpartition(".")[2] if field else None


class StatusInfo(msgspec.Struct, frozen=True):
    status: str = ""
    message: str | None = None
    reason: str | None = None


class RecordStatus(msgspec.Struct, frozen=True):
    """One record of a batch status (docs/api.md#batch-status): the fields it is matched on, and
    its ``status_info``. v1 names the numbers ``caller``/``receiver``; both are read."""

    id: str | int | None = None
    caller_number: str | None = None
    receiver_number: str | None = None
    caller: str | None = None
    receiver: str | None = None
    label_id: str | None = None
    starts_at: int | str | None = None
    status_info: StatusInfo = StatusInfo()


class BatchStatus(msgspec.Struct, frozen=True):
    client_account_id: str | None = None
    batch_id: str | None = None
    data: list[RecordStatus] = []


_batch_status = msgspec.json.Decoder(BatchStatus)


@dataclass(frozen=True, slots=True)
class StatusAnswer:
    """What one batch status request came to: the statuses (2xx with a readable body), or the
    HTTP status (0: no answer), ``Retry-After`` and why, for the reconciler to retry."""

    status: int
    batch: BatchStatus | None = None
    retry_after_s: float | None = None
    error: str | None = None


class Label(msgspec.Struct, frozen=True):
    """One entry of an account's label list (the fields we read; the API sends more)."""

    id: str
    label_type: str | None = None
    deleted_at: str | None = None

    @property
    def usable(self) -> bool:
        """A dynamic label that is not deleted: the only kind a call record may carry."""
        return self.label_type in (None, "dynamic") and self.deleted_at is None


_labels = msgspec.json.Decoder(list[Label])


class TokenSource(Protocol):
    """Where the client gets a token for an account, and says what the API answered of it."""

    async def get(self, account: str) -> str:
        """Any usable token of the account; ``AuthError`` if it has none."""
        ...

    def invalidate(self, account: str, token: str) -> None:
        """A 401: the token is dead."""
        ...

    def forbidden(self, account: str, endpoint: str) -> None:
        """A 403 from a read endpoint (``labels``, ``status``): about what was asked; the token
        is kept."""
        ...


class ApiClient:
    """POSTs batch bodies, and single records, for an account to the v1 or v2 endpoints."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        version: Literal["v1", "v2"],
        tokens: TokenSource,
    ) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._prefix = "/v2" if version == "v2" else ""
        self.tokens = tokens

    def __repr__(self) -> str:
        return f"ApiClient(base_url={self._base!r}, prefix={self._prefix!r})"

    def url(self, account: str) -> str:
        return f"{self._base}{self._prefix}/clients/{account}/dynamic_call_records"

    def record_url(self, account: str) -> str:
        """The single-record (real-time) endpoint (docs/api.md#single-record)."""
        return f"{self._base}{self._prefix}/clients/{account}/dynamic_call_record"

    async def get_labels(self, account: str, *, page: int, limit: int) -> list[Label] | str:
        """One page of the account's labels (docs/api.md#labels), or why it could not be had.

        A 401 invalidates the token, so the next attempt gets a fresh one (budget-aware, through
        the pool); a 403 is reported and the token kept (docs/design.md#auth).
        """
        try:
            token = await self.tokens.get(account)
        except AuthError as exc:
            return str(exc)
        url = f"{self._base}/clients/{account}/labels"
        headers = {"Authorization": f"Bearer {token}", "Accept": _ACCEPT}
        try:
            async with self._session.get(
                url, params={"page": str(page), "limit": str(limit)}, headers=headers
            ) as r:
                payload = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        self._refused(account, token, status, "labels")
        if status // 100 != 2:
            return f"the labels endpoint answered {status}"
        try:
            return _labels.decode(payload)
        except msgspec.DecodeError as exc:
            return f"the labels endpoint answered an unexpected body: {exc}"

    async def post_batch(
        self, account: str, body: bytes, token: str | None = None
    ) -> tuple[Response, str | None]:
        """Send one body on ``token`` (or any token of the account's pool); return the response
        and the token used (to invalidate it on 401)."""
        if token is None:
            try:
                token = await self.tokens.get(account)
            except AuthError as exc:
                return Response(status=0, error=str(exc)), None
        response = await self._post(self.url(account), body, token)
        if response.kind == "ok" and response.body:
            response = dataclasses.replace(response, batch_id=parse_batch_id(response.body))
        return response, token

    async def post_record(self, account: str, body: bytes, token: str) -> Response:
        """Send one record's body to the single-record endpoint on ``token``. It answers
        synchronously: a 2xx means the record is processed; a 400 says why it is refused."""
        return await self._post(self.record_url(account), body, token)

    async def _post(self, url: str, body: bytes, token: str) -> Response:
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": _ACCEPT,
        }
        try:
            async with self._session.post(url, data=body, headers=headers) as r:
                payload = await r.read()
                retry_after = parse_retry_after(r.headers.get("Retry-After"))
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Response(status=0, error=f"{type(exc).__name__}: {exc}")
        return Response(status, payload, retry_after)

    async def get_batch_status(self, account: str, batch_id: str, token: str) -> StatusAnswer:
        """The per-record statuses of one accepted batch (docs/api.md#batch-status), asked on
        ``token``; a 401 invalidates the token, a 403 is reported. Never raises for an answer or
        its absence."""
        headers = {"Authorization": f"Bearer {token}", "Accept": _ACCEPT}
        try:
            async with self._session.get(
                self.url(account), params={"batchId": batch_id}, headers=headers
            ) as r:
                payload = await r.read()
                retry_after = parse_retry_after(r.headers.get("Retry-After"))
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return StatusAnswer(0, error=f"{type(exc).__name__}: {exc}")
        self._refused(account, token, status, "status")
        if status // 100 != 2:
            text = payload[:200].decode(errors="replace")
            return StatusAnswer(status, retry_after_s=retry_after, error=text)
        try:
            return StatusAnswer(status, _batch_status.decode(payload))
        except msgspec.DecodeError as exc:
            return StatusAnswer(status, error=f"an unexpected batch status body: {exc}")

    def _refused(self, account: str, token: str, status: int, endpoint: str) -> None:
        """Only a 401 says the token is dead; a 403 from a read endpoint is about what was asked."""
        if status == 401:
            self.tokens.invalidate(account, token)
        elif status == 403:
            self.tokens.forbidden(account, endpoint)
