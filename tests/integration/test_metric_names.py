"""Every metric the alerting rules and the Grafana dashboard read is one a running service serves
(docs/operations.md#alerts): scraped from ``dcr-stream run`` after it delivered, with
reconciliation on, not read from the code."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.events import Ledger, events
from tests.support.helm import Helm, alert_rules, dashboard_queries, metrics_named
from tests.support.kafka import Broker
from tests.support.sandbox import SandboxThread
from tests.support.service import RUN_TIMEOUT_S, Service, get_text, metric_names
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chart]


def test_the_service_serves_every_metric_the_alerts_and_the_dashboard_read(
    kafka: Broker,
    helm: Helm,
    topic_factory: Callable[..., str],
    group_factory: Callable[[], str],
    sandbox_thread: Callable[..., SandboxThread],
    service_factory: Callable[..., Service],
) -> None:
    topic, group = topic_factory(partitions=2), group_factory()
    sandbox = sandbox_thread()
    produced = Ledger(kafka.bootstrap_servers, topic, 2)
    produced.produce(events(200, invalid_every=20))
    service = service_factory(sandbox.url, topic, group, api_version="v2", reconcile="on")
    wait_until(
        lambda: set(sandbox.accepted_receivers()) >= produced.valid,
        timeout_s=RUN_TIMEOUT_S,
        what="deliveries",
    )
    served = metric_names(get_text(service.http_port(), "/metrics"))
    read_by_alerts = metrics_named([rule["expr"] for rule in alert_rules(helm)])
    read_by_dashboard = metrics_named(dashboard_queries())
    assert read_by_alerts, "the rules read no dcr_ metric"
    assert read_by_dashboard, "the dashboard reads no dcr_ metric"
    assert read_by_alerts - served == set()
    assert read_by_dashboard - served == set()
