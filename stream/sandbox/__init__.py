"""``dcr-stream sandbox``: a local stand-in for the Dynamic Call Records API (docs/sandbox.md).

A tool beside the service, never imported by it: tests, the demo and the benchmarks run the service
against it, and operators can run it in staging::

    async with Sandbox(SandboxConfig(labels={account: frozenset({label_id})})) as sandbox:
        ...  # point the client at sandbox.url
        assert sandbox.stats().totals.records_accepted == 500

It serves the API's endpoints (v1 and v2 batches, token minting) under the API's rules
(docs/api.md), injects faults on purpose, and is steered while it runs through ``/_sandbox/*`` or
the same calls in Python. The package keeps those apart, so that the file list says where a change
goes::

    stream/sandbox/
    ├── server.py     Sandbox: start/stop, TLS, the Python control API; serve()
    ├── api.py        the API's endpoints: one route table, the steps they share     ┐
    ├── control.py    the /_sandbox/* endpoints                                      ├ aiohttp
    ├── responses.py  JSON answers in the API's error shapes                         ┘
    ├── state.py      State: rules + faults + ledger; reset rebuilds it              ┐
    ├── rules.py      tokens and accounts: auth, expiry, quota, mint budget, labels  │
    ├── faults.py     Faults, and the outage / 429 / 5xx / latency decisions         │
    ├── batches.py    a batch body checked record by record → Batch or Refusal       ├ no aiohttp
    ├── statuses.py   StatusRules: which accepted records fail (and why) or pend     │
    ├── ledger.py     the accepted batches and the counters behind Stats             │
    ├── config.py     SandboxConfig, parse_labels                                    │
    └── clock.py      Clock, ManualClock                                             ┘

A request flows down that list: ``api`` asks ``faults`` and ``rules`` whether to answer at all,
``batches`` whether the body holds, and keeps what passes in the ``ledger``; ``control`` and the
``Sandbox`` only read and change the ``State``. The rules take the time as an argument, so one
request is judged at one instant and they can be tried without a server. A new endpoint is a line
of the table in ``api`` and an answer beside it; a new limit is state in ``rules`` (per account
on ``_Account``, per token on ``_Token``) and one call in the steps ``api`` shares. ``command.py``
(the ``dcr-stream sandbox`` command) uses only the names below.

Time comes from an injectable ``Clock`` (``ManualClock`` in tests): token expiry, the quota window,
the mint limit, outage windows, the expiry rule and receive times all read it; injected latency is
real time. Account ids are compared lower-cased, as UUIDs are (``stream.validation`` does the same).
"""

from stream.sandbox.batches import MAX_RECORDS, Accepted
from stream.sandbox.clock import Clock, ManualClock
from stream.sandbox.config import SandboxConfig, parse_labels
from stream.sandbox.faults import Faults
from stream.sandbox.ledger import AccountStats, Stats
from stream.sandbox.server import Sandbox, serve
from stream.sandbox.statuses import REASONS, StatusRules

__all__ = [
    "MAX_RECORDS",
    "REASONS",
    "Accepted",
    "AccountStats",
    "Clock",
    "Faults",
    "ManualClock",
    "Sandbox",
    "SandboxConfig",
    "Stats",
    "StatusRules",
    "parse_labels",
    "serve",
]
