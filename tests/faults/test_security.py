"""Scenario 8: security. Against a broker that authenticates with SASL/SCRAM-SHA-512 and an API
served over HTTPS by a certificate of a CA made here (``openssl``), with minted tokens:

1. TLS verification is on by default: without ``DCR_API_CA_BUNDLE`` nothing is delivered or
   committed, the service keeps retrying (and says why);
2. with ``DCR_API_CA_BUNDLE`` naming the CA, everything is delivered end to end, Kafka reached only
   through the SASL pass-through (``DCR_KAFKA_CONFIG`` + ``DCR_KAFKA_SECRET_CONFIG``);
3. a wrong SASL password is refused by the broker, and the service says so; a malformed secret
   setting stops the start with exit status 2, naming the variable;
4. no secret (SASL passwords, API key, minted tokens) appears in any log line or error (exception
   text included), in ``/metrics``, ``/healthz``, ``/readyz``, or in the DLQ's headers.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream.devkafka import SCRAM_MECHANISM, LocalKafka
from tests.support.events import Ledger, events
from tests.support.kafka import Offsets, create_topic
from tests.support.sandbox import SandboxThread
from tests.support.scenario import DEADLINE_S, sized
from tests.support.service import Service, get_text
from tests.support.verifier import conclude, read_dead_letters, verify, wait_complete
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

EVENTS = sized(5_000, 50_000)
PARTITIONS = 4
USER = "dcr-stream"
PASSWORD = "sasl-" + secrets.token_hex(12)
WRONG_PASSWORD = "sasl-" + secrets.token_hex(12)
KEY_ID = "key-1"
API_KEY = "api-" + secrets.token_hex(16)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1 (PEM files)."""
    where = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=dcr-stream test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=where,
    )  # fmt: skip
    openssl(
        "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=where,
    )  # fmt: skip
    (where / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        cwd=where,
    )  # fmt: skip
    return {name: where / f"{name}.pem" for name in ("ca", "server")} | {
        "key": where / "server.key"
    }


@pytest.fixture(scope="module")
def scram_broker() -> Iterator[LocalKafka]:
    broker = LocalKafka(scram_users={USER: PASSWORD})
    broker.start()
    yield broker
    broker.stop()


def sasl(password: str) -> dict[str, str]:
    """The service's settings for the broker's SASL listener (``service_factory`` keywords)."""
    return {
        "kafka_config": json.dumps(
            {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": SCRAM_MECHANISM,
                "sasl.username": USER,
            }
        ),
        "kafka_secret_config": json.dumps({"sasl.password": password}),
    }


def http_text(service: Service) -> str:
    """``/metrics``, ``/healthz`` and ``/readyz`` as served now, whatever their status."""
    port = service.http_port()
    return "\n".join(get_text(port, path) for path in ("/metrics", "/healthz", "/readyz"))


def test_secrets_stay_in_tls_is_verified_and_sasl_scram_delivers(
    scram_broker: LocalKafka,
    tls: dict[str, Path],
    group_factory: Callable[[], str],
    sandbox_thread: Callable[..., SandboxThread],
    service_factory: Callable[..., Service],
) -> None:
    started = time.monotonic()
    topic, group = create_topic(scram_broker.bootstrap_servers, PARTITIONS), group_factory()
    sandbox = sandbox_thread(
        static_token=None,
        key_id=KEY_ID,
        api_key=API_KEY,
        tls_cert=str(tls["server"]),
        tls_key=str(tls["key"]),
    )
    assert sandbox.url.startswith("https://")
    ledger = Ledger(scram_broker.bootstrap_servers, topic, PARTITIONS)
    # Invalid every 25th: each partition starts with valid events, so that nothing can be
    # committed while none is delivered.
    ledger.produce(events(EVENTS, invalid_every=25))
    settings = {
        "kafka_bootstrap_servers": scram_broker.sasl_bootstrap_servers,
        "api_token": "",
        "api_key_id": KEY_ID,
        "api_key": API_KEY,
        "shutdown_timeout_s": "5",
        "log_level": "DEBUG",
        **sasl(PASSWORD),
    }
    outputs: list[str] = []

    # 1. No CA bundle: the self-made CA is not trusted, nothing goes out, nothing commits.
    untrusting = service_factory(sandbox.url, topic, group, **settings)

    def certificate_retries() -> int:
        return sum(
            "request for account" in e["message"] and "Certificate" in e["message"]
            for e in untrusting.lines()
        )

    wait_until(lambda: certificate_retries() >= 6, timeout_s=120, what="retries refused by TLS")
    with Offsets(scram_broker.bootstrap_servers, group, topic, PARTITIONS) as offsets:
        committed = offsets.committed()
    assert all(c < 0 for c in committed), f"committed {committed} with nothing delivered"
    assert sandbox.run(sandbox.sandbox.accepted) == []
    assert sandbox.run(sandbox.sandbox.stats).totals.tokens == {}, "a token was minted"
    outputs.append(http_text(untrusting))
    untrusting.signal(signal.SIGTERM)
    # A stop that leaves its records to the next owner is a normal stop (docs/design.md#shutdown).
    assert untrusting.wait(30) == 0
    assert "records consumed and not committed" in untrusting.lines()[-1]["message"]
    outputs.append(untrusting.log.read_text())

    # 2. With the CA bundle: everything delivered, Kafka only through SASL/SCRAM.
    trusting = service_factory(sandbox.url, topic, group, api_ca_bundle=str(tls["ca"]), **settings)
    wait_complete(ledger, sandbox, group, DEADLINE_S)
    outputs.append(http_text(trusting))
    report = verify(
        scenario="8. security (TLS + SASL/SCRAM)",
        ledger=ledger,
        sandbox=sandbox,
        group=group,
        started=started,
        notes={"certificate_retries_without_ca": certificate_retries()},
    )
    conclude(report, trusting)
    outputs.append(trusting.log.read_text())
    minted = sandbox.run(lambda: list(sandbox.sandbox._tokens))
    assert minted, "no token was minted"

    # 3. A wrong SASL password: the broker refuses, the service says so (and not the password).
    refused = service_factory(
        "https://127.0.0.1:9", topic, group_factory(), **{**settings, **sasl(WRONG_PASSWORD)}
    )
    wait_until(
        lambda: any("Authentication failed" in e["message"] for e in refused.lines()),
        timeout_s=60,
        what="the broker to refuse the wrong password",
    )
    outputs.append(http_text(refused))
    refused.kill()
    outputs.append(refused.log.read_text())
    # A malformed secret setting (no closing brace): the error names the variable, not the value.
    malformed = service_factory(
        "https://127.0.0.1:9",
        topic,
        group_factory(),
        **{**settings, "kafka_secret_config": json.dumps({"sasl.password": PASSWORD})[:-1]},
    )
    assert malformed.wait(30) == 2
    error = malformed.log.read_text()
    assert "DCR_KAFKA_SECRET_CONFIG" in error, error
    outputs.append(error)

    # 4. No secret anywhere it could leak.
    letters = read_dead_letters(scram_broker.bootstrap_servers, f"{topic}.dlq")
    outputs += [repr(headers) for headers in letters.headers]
    assert letters.headers, "nothing was dead-lettered: the DLQ check would prove nothing"
    assert any("dcr_records_delivered_total" in text for text in outputs), "no /metrics scraped"
    for secret in (PASSWORD, WRONG_PASSWORD, API_KEY, *minted):
        leaks = [text[:200] for text in outputs if secret in text]
        assert not leaks, f"a secret leaked: {leaks}"
