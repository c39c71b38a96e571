"""Least privilege: the service on a broker that authorises every request (``StandardAuthorizer``,
nothing allowed without an ACL) and grants it no CREATE. The topics are made beforehand, as a
platform team would, and the service's SASL/SCRAM user gets exactly the ACLs docs/operations.md#acls
lists. End to end: events delivered, dead letters written, offsets committed, token slots held,
receipts written, and no topic created or asked for. A topic that is missing is then an error that
says what to do.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from stream.devkafka import SCRAM_MECHANISM, LocalKafka
from stream.errors import TopicError
from stream.topics import TopicSpec, ensure_topics
from tests.support.events import Ledger, events
from tests.support.kafka import create_topic
from tests.support.sandbox import SandboxThread
from tests.support.scenario import DEADLINE_S
from tests.support.service import Service, get_text
from tests.support.verifier import conclude, verify, wait_complete
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

EVENTS = 2_000
PARTITIONS = 4
SLOTS = 10
"""``DCR_TOKEN_POOL_SIZE``'s default: the token topic has a partition per slot."""
USER = "dcr-stream"
PASSWORD = "sasl-" + secrets.token_hex(12)


@pytest.fixture(scope="module")
def acl_broker() -> Iterator[LocalKafka]:
    broker = LocalKafka(scram_users={USER: PASSWORD}, acls=True)
    broker.start()
    yield broker
    broker.stop()


def service_acls(principal: str, *, inputs: list[str], group: str) -> list[AclBinding]:
    """The service's ACLs as docs/operations.md#acls lists them (READ and WRITE imply DESCRIBE)."""
    dlq, receipts, tokens = f"{inputs[0]}.dlq", f"{inputs[0]}.receipts", f"{group}.tokens"
    grants = [
        *((ResourceType.TOPIC, topic, AclOperation.READ) for topic in inputs),
        (ResourceType.TOPIC, dlq, AclOperation.WRITE),
        (ResourceType.TOPIC, receipts, AclOperation.READ),
        (ResourceType.TOPIC, receipts, AclOperation.WRITE),
    ]
    literal, prefixed = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    bindings = [
        AclBinding(kind, name, literal, principal, "*", op, AclPermissionType.ALLOW)
        for kind, name, op in grants
    ]
    # The token slots and their claims (<group>.tokens.claims): one prefix.
    bindings += [
        AclBinding(
            ResourceType.TOPIC, tokens, prefixed, principal, "*", op, AclPermissionType.ALLOW
        )
        for op in (AclOperation.READ, AclOperation.WRITE)
    ]
    # The groups <group>, <group>.tokens, <group>.reconcile and the originals reader's.
    bindings.append(
        AclBinding(
            ResourceType.GROUP,
            group,
            ResourcePatternType.PREFIXED,
            principal,
            "*",
            AclOperation.READ,
            AclPermissionType.ALLOW,
        )
    )
    return bindings


def sasl_config(broker: LocalKafka) -> dict[str, str]:
    return {
        "bootstrap.servers": broker.sasl_bootstrap_servers,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": SCRAM_MECHANISM,
        "sasl.username": USER,
        "sasl.password": PASSWORD,
    }


def test_the_service_runs_with_no_create_on_topics_made_beforehand(
    acl_broker: LocalKafka,
    group_factory: Callable[[], str],
    sandbox_thread: Callable[..., SandboxThread],
    service_factory: Callable[..., Service],
) -> None:
    started = time.monotonic()
    stage, group = acl_broker.bootstrap_servers, group_factory()
    topic = create_topic(stage, PARTITIONS)
    create_topic(stage, 1, name=f"{topic}.dlq")
    create_topic(stage, PARTITIONS, name=f"{topic}.receipts")
    compacted = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
    create_topic(stage, SLOTS, name=f"{group}.tokens", config=compacted)
    claims = {"message.timestamp.type": "LogAppendTime", "retention.ms": "600000"}
    create_topic(stage, 1, name=f"{group}.tokens.claims", config=claims)
    admin = AdminClient({"bootstrap.servers": stage, "log_level": 0})
    for future in admin.create_acls(
        service_acls(f"User:{USER}", inputs=[topic], group=group)
    ).values():
        future.result(30)

    sandbox = sandbox_thread()
    ledger = Ledger(stage, topic, PARTITIONS)
    ledger.produce(events(EVENTS, invalid_every=25))
    service = service_factory(
        sandbox.url,
        topic,
        group,
        kafka_bootstrap_servers=acl_broker.sasl_bootstrap_servers,
        api_version="v2",  # reconciliation on: the receipts topic and its group too
        kafka_config=json.dumps(
            {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": SCRAM_MECHANISM,
                "sasl.username": USER,
            }
        ),
        kafka_secret_config=json.dumps({"sasl.password": PASSWORD}),
    )

    wait_complete(ledger, sandbox, group, DEADLINE_S)

    def metric(name: str) -> float:
        found = re.search(rf"^{name} (\S+)$", get_text(service.http_port(), "/metrics"), re.M)
        assert found is not None, f"no {name}"
        return float(found[1])

    assert metric("dcr_token_slots_held") == SLOTS
    # The receipts written and read back by the reconciler's group (it waits for the status).
    wait_until(
        lambda: metric("dcr_reconcile_receipts_in_hand") > 0,
        timeout_s=30,
        what="the reconciler to read the receipts",
    )
    assert '"ok"' in get_text(service.http_port(), "/healthz")
    report = verify(
        scenario="least privilege (ACLs, no CREATE)",
        ledger=ledger,
        sandbox=sandbox,
        group=group,
        started=started,
    )
    assert report.dead_lettered == EVENTS // 25
    conclude(report, service)
    log = service.log.read_text()
    assert "created topic" not in log
    assert "cannot make sure" not in log
    assert "AUTHORIZATION" not in log.upper().replace(" ", "_"), "a request was not authorised"

    # A topic it may not see (missing or not): one error that says what to do.
    with pytest.raises(TopicError, match=r"allow this principal DESCRIBE .* create it beforehand"):
        ensure_topics(sasl_config(acl_broker), [TopicSpec(name=f"{group}.absent", partitions=1)])
