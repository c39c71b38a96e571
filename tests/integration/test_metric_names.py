"""Every metric the alerting rules and the Grafana dashboard read is one a running service serves
(docs/operations.md#alerts): scraped from ``dcr-stream run`` after it delivered, with
reconciliation on, not read from the code."""

from __future__ import annotations

import pytest

from tests.support.helm import Helm, alert_rules, dashboard_queries, metrics_named
from tests.support.scenario import ScenarioFactory
from tests.support.service import RUN_TIMEOUT_S, get_text, metric_names
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chart]


def test_the_service_serves_every_metric_the_alerts_and_the_dashboard_read(
    helm: Helm, scenario: ScenarioFactory
) -> None:
    run = scenario(partitions=2)
    run.produce(200, invalid_every=20)
    service = run.service(api_version="v2", reconcile="on")
    wait_until(run.delivered(), timeout_s=RUN_TIMEOUT_S, what="deliveries")
    served = metric_names(get_text(service.http_port(), "/metrics"))
    read_by_alerts = metrics_named([rule["expr"] for rule in alert_rules(helm)])
    read_by_dashboard = metrics_named(dashboard_queries())
    assert read_by_alerts, "the rules read no dcr_ metric"
    assert read_by_dashboard, "the dashboard reads no dcr_ metric"
    assert read_by_alerts - served == set()
    assert read_by_dashboard - served == set()
