"""The local broker's additions for this suite, without starting it: the SASL/SCRAM listener's
properties, credentials the ``--add-scram`` syntax can carry, and a repr without passwords.
(A restart on the same ports with the same data is scenario 3; SCRAM in use, scenario 8.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream import devkafka
from stream.devkafka import LocalKafka

pytestmark = pytest.mark.faults


def test_a_sasl_listener_is_added_for_scram_users(tmp_path: Path) -> None:
    text = devkafka._server_properties(tmp_path, 9092, 9093, sasl_port=9094)
    assert "SASL_PLAINTEXT://127.0.0.1:9094" in text.split("listeners=")[1].splitlines()[0]
    assert "SASL_PLAINTEXT:SASL_PLAINTEXT" in text
    assert "sasl.enabled.mechanisms=SCRAM-SHA-512" in text
    assert "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=" in text
    assert "inter.broker.listener.name=PLAINTEXT" in text
    assert "SASL" not in devkafka._server_properties(tmp_path, 9092, 9093)


@pytest.mark.parametrize("user", [{"": "pw"}, {"u": ""}, {"u": "a,b"}, {"u=v": "pw"}, {"u": "[x]"}])
def test_credentials_the_storage_tool_cannot_carry_are_refused(user: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="SCRAM user"):
        LocalKafka(scram_users=user, java="java")


def test_the_repr_names_users_not_passwords() -> None:
    broker = LocalKafka(scram_users={"dcr": "hunter2-secret"}, java="java")
    assert "dcr" in repr(broker)
    assert "hunter2" not in repr(broker)
