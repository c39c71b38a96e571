"""The sandbox's labels endpoint (docs/api.md#labels) over real HTTP: pages, auth, an unknown
account, labels created and deleted while it runs, an injected failure; and the service's client
for it (``ApiClient.get_labels``) reading every page through the gate's loader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from stream.api import ApiClient
from stream.sandbox import Sandbox, SandboxConfig
from stream.secrets import Secret
from stream.tokens import StaticToken
from tests.support.sandbox import SandboxFactory

ACCOUNT = "6f1c1c3e-7d0a-4d8e-9a3c-2f6d1b9e0a11"
UNKNOWN_ACCOUNT = "0d3f5a4e-1c2b-4e6f-8a9b-7c6d5e4f3a2b"
TOKEN = "static-test-token"
LABELS = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(1500)]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def sandbox(sandbox_factory: SandboxFactory) -> Sandbox:
    return await sandbox_factory(
        SandboxConfig(static_token=TOKEN, labels={ACCOUNT: frozenset(LABELS)})
    )


async def get(
    session: aiohttp.ClientSession, sandbox: Sandbox, account: str, token: str = TOKEN, **query: int
) -> tuple[int, Any]:
    async with session.get(
        f"{sandbox.url}/clients/{account}/labels",
        params={k: str(v) for k, v in query.items()},
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status, await response.json()


async def test_the_list_comes_in_pages_of_limit(
    session: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    status, first = await get(session, sandbox, ACCOUNT)
    _, second = await get(session, sandbox, ACCOUNT, page=2)
    _, small = await get(session, sandbox, ACCOUNT, page=3, limit=10)

    assert status == 200
    assert len(first) == 1000  # the default limit
    listed = [label["id"] for label in first + second]
    assert len(listed) == len(LABELS) + 1  # and one static label
    assert set(LABELS) < set(listed)
    assert [label["id"] for label in small] == listed[20:30]
    entry = next(label for label in first + second if label["id"] == LABELS[0])
    assert entry["label_type"] == "dynamic"
    assert entry["deleted_at"] is None
    assert entry["client_account_id"] == ACCOUNT
    assert [label["label_type"] for label in first + second].count("static") == 1


async def test_past_the_last_page_is_an_empty_array(
    session: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    assert await get(session, sandbox, ACCOUNT, page=9) == (200, [])


async def test_a_bad_token_is_401_and_an_unknown_account_404(
    session: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    assert (await get(session, sandbox, ACCOUNT, token="nope"))[0] == 401
    assert (await get(session, sandbox, UNKNOWN_ACCOUNT))[0] == 404
    assert (await get(session, sandbox, ACCOUNT, page=0))[0] == 400


async def test_labels_created_and_deleted_while_it_runs(
    session: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    new = "7e1d2c3b-4a5f-4687-9a0b-1c2d3e4f5a6b"
    sandbox.learn_labels(ACCOUNT, [new])
    async with session.post(
        f"{sandbox.url}/_sandbox/labels/delete", json={"account": ACCOUNT, "label_ids": [LABELS[0]]}
    ) as response:
        assert response.status == 200
        assert LABELS[0] not in (await response.json())["label_ids"]

    _, listed = await get(session, sandbox, ACCOUNT, limit=5000)

    by_id = {label["id"]: label for label in listed}
    assert by_id[new]["deleted_at"] is None
    assert by_id[LABELS[0]]["deleted_at"] is not None
    assert new in sandbox.forget_labels(ACCOUNT, [])  # known: batches may carry it


async def test_an_injected_status_answers_the_labels_endpoint_only(
    session: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    sandbox.set_faults(labels_status=503)

    assert (await get(session, sandbox, ACCOUNT))[0] == 503
    assert sandbox.stats().accounts[ACCOUNT].labels == {"503": 1}


async def test_the_client_reads_a_page_and_reports_a_failure(
    session: aiohttp.ClientSession, sandbox: Sandbox
) -> None:
    client = ApiClient(
        session, base_url=sandbox.url, version="v2", tokens=StaticToken(Secret(TOKEN))
    )

    page = await client.get_labels(ACCOUNT, page=1, limit=1000)
    missing = await client.get_labels(UNKNOWN_ACCOUNT, page=1, limit=1000)

    assert isinstance(page, list)
    assert len(page) == 1000
    assert sum(label.usable for label in page) == 999  # the static label is not usable
    assert missing == "the labels endpoint answered 404"
