"""Prometheus metrics (prefix ``dcr_``); ``stream.http`` serves them on ``/metrics``.

Counters live in ``Counts``, plain ints and dicts that the hot path bumps without registry calls; a
collector turns them into Prometheus counters at scrape time, together with the gauges of live
state (buffered records, partitions, lag) read from the objects that own that state. Only the
histograms are observed directly, once per request.

Label sets stay bounded: accounts, status classes, rejection codes and stages (fixed lists), topic
and partition (what the group owns). No record or phone number is ever a label. A deployment that
serves many accounts turns the per-account series into one (``DCR_METRICS_PER_ACCOUNT=off``): every
``account`` and ``slot`` label is then ``*``, counters and rates summed, ages the oldest
(docs/operations.md#metrics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

__all__ = ["Counts", "Metrics", "State", "status_class"]

_BATCH_BUCKETS = (1, 10, 50, 100, 200, 300, 400, 499, 500)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_ACCEPT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def status_class(status: int) -> str:
    """``2xx``, ``4xx``, ``5xx``, with 429 on its own, and ``error`` when no answer came."""
    if status == 0:
        return "error"
    if status == 429:
        return "429"
    return f"{status // 100}xx"


@dataclass(slots=True)
class Counts:
    """Every counter of the service; one instance per process, shared by the pipeline's parts."""

    consumed: int = 0
    delivered: dict[str, int] = field(default_factory=dict)
    """account → records accepted by the API"""
    dead_lettered: dict[tuple[str, str], int] = field(default_factory=dict)
    """(code, stage) → records dead-lettered and acknowledged"""
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    """(account, status class) → API requests"""
    path_requests: dict[tuple[str, str], int] = field(default_factory=dict)
    """(path, status class) → API requests, ``path`` being ``batch`` or ``realtime``."""
    path_records: dict[str, int] = field(default_factory=dict)
    """path → records accepted by the API through it."""
    realtime_overflow: dict[str, int] = field(default_factory=dict)
    """account → urgent records the real-time lane had no room for, sent in high batches."""
    retries: int = 0
    throttled: int = 0
    """Requests answered 429."""
    throttled_by: dict[tuple[str, str], int] = field(default_factory=dict)
    """(account, cause) → 429s: ``request`` (a batch request; its token backs off) or ``mint``."""
    bisections: int = 0
    commit_failures: dict[str, int] = field(default_factory=dict)
    """group (``input``, ``reconcile``) → partition commits Kafka refused (``stream.commits``)."""
    dlq_write_failures: int = 0
    """Dead-letter writes Kafka did not acknowledge (each is retried)."""
    dlq_truncated: int = 0
    """Dead letters written cut, their whole version too large for the topic."""
    reconciled: dict[tuple[str, str], int] = field(default_factory=dict)
    """(final status, code) → records whose batch status was reconciled: ``delivered`` (code
    ``""``), ``failed`` (a code of stage ``status``), ``unreconciled`` (``no_batch_id``)."""
    status_requests: dict[tuple[str, str], int] = field(default_factory=dict)
    """(account, status class) → batch status requests."""
    rechecks: int = 0
    """Records whose status was still pending, written back to be asked about again."""

    def bump(self, table: dict[tuple[str, str], int], key: tuple[str, str], n: int = 1) -> None:
        table[key] = table.get(key, 0) + n


class PoolState(Protocol):
    """An account's token pool in this process (``stream.pool.PoolReport``)."""

    @property
    def live(self) -> int: ...
    @property
    def slots(self) -> int: ...
    @property
    def mints(self) -> int: ...
    @property
    def mints_refused(self) -> int: ...
    @property
    def mints_throttled(self) -> int: ...
    @property
    def mints_held_back(self) -> int: ...
    @property
    def requests(self) -> dict[int, int]: ...
    @property
    def forbidden(self) -> dict[str, int]: ...
    @property
    def auth_refused(self) -> int: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class State:
    """Readers of the pipeline's live state, called at scrape time."""

    buffered: Callable[[], int]
    """Records consumed and not yet finished."""
    open_records: Callable[[], int]
    """Records waiting in open batches (not yet sent)."""
    paused: Callable[[], int]
    assigned: Callable[[], int]
    lag: Callable[[], dict[tuple[str, int], int]]
    last_commit: Callable[[], float]
    token_refreshes: Callable[[], int]
    rates: Callable[[], dict[str, float]]
    """Per account, the request rate its tokens (and cap) allow now."""
    token_claims: Callable[[], Mapping[str, int]] = dict
    """Token sharing: outcome (``granted``, ``refused``, ``late``) → claims since start."""
    label_registries: Callable[[], Mapping[str, tuple[int, float | None]]] = dict
    """Per account, labels its registry lists and seconds since it was last read successfully."""
    label_refreshes: Callable[[], Mapping[tuple[str, str], int]] = dict
    """(account, ``ok`` | ``failed``) → registry reads."""
    label_probes: Callable[[], Mapping[tuple[str, str], int]] = dict
    """(account, outcome) → probe requests for labels the registry could not confirm."""
    label_held: Callable[[], int] = int
    """Records waiting for a registry refresh or a probe."""
    pools: Callable[[], Mapping[str, PoolState]] = dict
    """Per account, its token pool in this process."""
    slots_held: Callable[[], int] = int
    """Token slots this process holds (the same slots for every account)."""
    reconcile_lag: Callable[[], float] = float
    """Seconds since the oldest batch whose receipt the reconciler holds was accepted."""
    reconcile_in_hand: Callable[[], int] = int
    """Receipts the reconciler holds (waiting for their status time, or being reported)."""
    oldest_unfinished: Callable[[], Mapping[tuple[str, int], float]] = dict
    """Per partition owned, the age in seconds of its oldest unfinished record (0: none)."""
    dlq_blocked: Callable[[], Mapping[tuple[str, int], int]] = dict
    """Per partition, records whose dead letter Kafka refused for a reason no retry cures."""
    ready: Callable[[], bool] = lambda: True
    """Whether ``/readyz`` answers 200 now."""


class Metrics:
    """The registry (one per ``Metrics``: tests make several), the counts and the histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.counts = Counts()
        r = self.registry
        self.latency = Histogram(
            "dcr_api_request_duration_seconds",
            "API request latency",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dcr_batch_records", "Records per request sent", buckets=_BATCH_BUCKETS, registry=r
        )
        self.limiter_wait = Histogram(
            "dcr_rate_limiter_wait_seconds",
            "Time a batch ready to go waited for a quota slot",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )

        self.consume_to_accept = Histogram(
            "dcr_consume_to_accept_seconds",
            "From consume to acceptance by the API, by path (batch: a batch's oldest record)",
            ["path"],
            buckets=_ACCEPT_BUCKETS,
            registry=r,
        )

    def watch(self, state: State, *, per_account: bool = True) -> None:
        """Collect ``state`` at each scrape; ``per_account`` False: ``DCR_METRICS_PER_ACCOUNT=off``
        (every account's and slot's series summed into one)."""
        collector = _Collector(self.counts, state)
        self.registry.register(collector if per_account else _AllAccounts(collector))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, counts: Counts, state: State) -> None:
        self._counts = counts
        self._state = state

    def collect(self) -> Iterator[Metric]:
        c, s = self._counts, self._state
        yield CounterMetricFamily("dcr_events_consumed", "Kafka messages consumed", c.consumed)
        yield _labelled(
            "dcr_records_delivered", "Records accepted by the API", ["account"], c.delivered
        )
        yield _labelled(
            "dcr_records_dead_lettered",
            "Records written to the dead-letter topic and acknowledged",
            ["code", "stage"],
            c.dead_lettered,
        )
        yield _labelled(
            "dcr_api_requests", "API requests by answer", ["account", "status_class"], c.requests
        )
        yield _labelled(
            "dcr_path_requests",
            "API requests by path (batch, realtime) and answer",
            ["path", "status_class"],
            c.path_requests,
        )
        yield _labelled(
            "dcr_path_records_delivered",
            "Records accepted by the API, by path (batch, realtime)",
            ["path"],
            c.path_records,
        )
        yield _labelled(
            "dcr_realtime_overflow",
            "Urgent records the real-time lane had no room for, sent in high-priority batches",
            ["account"],
            c.realtime_overflow,
        )
        yield CounterMetricFamily("dcr_api_retries", "Requests scheduled again", c.retries)
        yield CounterMetricFamily("dcr_api_throttled", "Requests answered 429", c.throttled)
        yield CounterMetricFamily(
            "dcr_api_bisections", "Batches split after 400/413/422", c.bisections
        )
        yield _labelled(
            "dcr_commit_failures",
            "Partition commits Kafka refused, by consumer group (input, reconcile)",
            ["group"],
            c.commit_failures,
        )
        yield CounterMetricFamily(
            "dcr_dlq_write_failures",
            "Dead-letter writes Kafka did not acknowledge (retried)",
            c.dlq_write_failures,
        )
        yield CounterMetricFamily(
            "dcr_dlq_truncated",
            "Dead letters written cut (value prefix, dcr.error.truncated): too large whole",
            c.dlq_truncated,
        )
        yield _by_partition(
            "dcr_dlq_blocked_records",
            "Records whose dead letter the topic refuses for good (missing, not authorised, too "
            "large even cut); their partitions commit no further",
            s.dlq_blocked(),
        )
        yield _by_partition(
            "dcr_partition_oldest_unfinished_seconds",
            "Age of the partition's oldest record not yet finished (its commits stop there); 0: "
            "none",
            s.oldest_unfinished(),
        )
        yield GaugeMetricFamily(
            "dcr_buffered_records", "Records consumed and not yet finished", value=s.buffered()
        )
        yield GaugeMetricFamily(
            "dcr_open_batch_records", "Records waiting in open batches", value=s.open_records()
        )
        yield GaugeMetricFamily(
            "dcr_paused_partitions", "Partitions paused by backpressure", value=s.paused()
        )
        yield GaugeMetricFamily(
            "dcr_assigned_partitions", "Partitions this process owns", value=s.assigned()
        )
        yield GaugeMetricFamily(
            "dcr_ready",
            "1 while /readyz answers 200 (joined, holds a token, can dead-letter)",
            value=float(s.ready()),
        )
        yield _by_partition(
            "dcr_consumer_lag",
            "Messages between the consumer's position and the end of the partition",
            s.lag(),
        )
        yield GaugeMetricFamily(
            "dcr_last_commit_timestamp_seconds",
            "When offsets were last committed successfully (epoch seconds; 0: never)",
            value=s.last_commit(),
        )
        yield CounterMetricFamily(
            "dcr_token_refreshes", "Tokens minted since start", value=s.token_refreshes()
        )
        claims = CounterMetricFamily(
            "dcr_token_claims",
            "Requests claimed on shared tokens since start (DCR_TOKEN_SHARING), by outcome: "
            "granted, refused (another replica had the token's bucket, or no answer), late (read "
            "back too late to be used)",
            labels=["outcome"],
        )
        for outcome, count in sorted(s.token_claims().items()):
            claims.add_metric([outcome], count)
        yield claims
        rates = GaugeMetricFamily(
            "dcr_rate_limit_rps",
            "Requests per second allowed now: the paces of the tokens held (not backing off after "
            "a 429), at most DCR_RATE_LIMIT_RPS",
            labels=["account"],
        )
        for account, rps in sorted(s.rates().items()):
            rates.add_metric([account], rps)
        yield rates
        size = GaugeMetricFamily(
            "dcr_label_registry_labels", "Labels an account's registry lists", labels=["account"]
        )
        age = GaugeMetricFamily(
            "dcr_label_registry_age_seconds",
            "Seconds since an account's label registry was last read successfully",
            labels=["account"],
        )
        for account, (count, age_s) in sorted(s.label_registries().items()):
            size.add_metric([account], count)
            if age_s is not None:
                age.add_metric([account], age_s)
        yield size
        yield age
        yield _labelled(
            "dcr_label_registry_refreshes",
            "Label registry reads by result (ok, failed)",
            ["account", "result"],
            s.label_refreshes(),
        )
        yield _labelled(
            "dcr_label_probes",
            "Probe requests for labels the registry could not confirm, by outcome",
            ["account", "outcome"],
            s.label_probes(),
        )
        yield GaugeMetricFamily(
            "dcr_label_held_records",
            "Records waiting for a label registry refresh or a probe",
            value=s.label_held(),
        )
        yield from _pool_metrics(c, s)
        yield from _reconcile_metrics(c, s)


def _reconcile_metrics(c: Counts, s: State) -> Iterator[Metric]:
    """Batch statuses (docs/design.md#reconciliation)."""
    yield _labelled(
        "dcr_records_reconciled",
        "Records by final status (delivered, failed) and code, from their batch status",
        ["status", "code"],
        c.reconciled,
    )
    yield _labelled(
        "dcr_status_requests",
        "Batch status requests by answer",
        ["account", "status_class"],
        c.status_requests,
    )
    yield CounterMetricFamily(
        "dcr_status_rechecks", "Records found pending, to be asked about again", c.rechecks
    )
    yield GaugeMetricFamily(
        "dcr_reconcile_lag_seconds",
        "Seconds since the oldest batch the reconciler holds was accepted (0: none held)",
        value=s.reconcile_lag(),
    )
    yield GaugeMetricFamily(
        "dcr_reconcile_receipts_in_hand",
        "Receipts the reconciler holds, waiting for their status or being reported",
        value=s.reconcile_in_hand(),
    )


def _pool_metrics(c: Counts, s: State) -> Iterator[Metric]:
    """The token pools (docs/design.md#auth): what each account holds and spends."""
    pools = s.pools()
    yield GaugeMetricFamily(
        "dcr_token_slots_held", "Token slots this replica holds", value=s.slots_held()
    )
    gauges: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
        "live": GaugeMetricFamily(
            "dcr_tokens_live", "Tokens this replica may send on", labels=["account"]
        ),
        "auth_refused": GaugeMetricFamily(
            "dcr_account_auth_refused",
            "1 while the account's credentials are refused past DCR_AUTH_GIVE_UP_S: its records "
            "are dead-lettered as auth_refused",
            labels=["account"],
        ),
        "mints": CounterMetricFamily(
            "dcr_token_mints", "Tokens this replica minted", labels=["account"]
        ),
        "mints_refused": CounterMetricFamily(
            "dcr_token_mints_refused", "Mints the API refused", labels=["account"]
        ),
        "mints_held_back": CounterMetricFamily(
            "dcr_token_mints_held_back",
            "Mints a slot needed that its budget (10 per 30 minutes per account) held back",
            labels=["account"],
        ),
    }
    requests = CounterMetricFamily(
        "dcr_token_requests",
        "Requests sent by this replica, per token slot (static: per token)",
        labels=["account", "slot"],
    )
    throttled = CounterMetricFamily(
        "dcr_api_throttled_by",
        "429s by cause: request (a batch request; its token backs off) or mint",
        labels=["account", "cause"],
    )
    forbidden = CounterMetricFamily(
        "dcr_api_forbidden",
        "403s from the labels or batch-status endpoint, by endpoint (the token is kept)",
        labels=["account", "endpoint"],
    )
    by_cause = dict(c.throttled_by)
    for account, pool in sorted(pools.items()):
        for endpoint, count in sorted(pool.forbidden.items()):
            forbidden.add_metric([account, endpoint], count)
        for name, family in gauges.items():
            family.add_metric([account], getattr(pool, name))
        for slot, count in sorted(pool.requests.items()):
            requests.add_metric([account, str(slot)], count)
        by_cause[(account, "mint")] = pool.mints_throttled
    for (account, cause), count in sorted(by_cause.items()):
        throttled.add_metric([account, cause], count)
    yield from gauges.values()
    yield requests
    yield throttled
    yield forbidden


def _by_partition(
    name: str, doc: str, values: Mapping[tuple[str, int], float]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["topic", "partition"])
    for (topic, partition), value in sorted(values.items()):
        family.add_metric([topic, str(partition)], value)
    return family


def _labelled(
    name: str,
    doc: str,
    labels: list[str],
    table: Mapping[str, int] | Mapping[tuple[str, str], int],
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(table.items()):
        family.add_metric([key] if isinstance(key, str) else list(key), value)
    return family


_MERGED = ("account", "slot")
"""The labels ``DCR_METRICS_PER_ACCOUNT=off`` merges: their value becomes ``*``."""


class _AllAccounts(Collector):
    """A collector's families with the per-account (and per-slot) series merged into one each:
    summed, but for ages (``*_seconds`` gauges), where the oldest is what an alert wants."""

    def __init__(self, inner: Collector) -> None:
        self._inner = inner

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            if not any(k in sample.labels for sample in family.samples for k in _MERGED):
                yield family
                continue
            oldest = family.type == "gauge" and family.name.endswith("_seconds")
            merged: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            for sample in family.samples:
                labels = {k: "*" if k in _MERGED else v for k, v in sample.labels.items()}
                key = (sample.name, tuple(sorted(labels.items())))
                known = merged.get(key)
                if known is None:
                    merged[key] = sample.value
                else:
                    merged[key] = max(known, sample.value) if oldest else known + sample.value
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [
                Sample(name, dict(labels), value) for (name, labels), value in merged.items()
            ]
            yield out
