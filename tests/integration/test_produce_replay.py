"""``dcr-stream produce`` and ``dcr-stream replay`` against the real broker; the replay of the API's
rejections, once the sandbox learned their label, through the service process (issue 6)."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest
from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient

from stream.cli import main
from stream.dlq import build
from stream.tools.produce import INVALID_KINDS, Mix, account_ids, events, produce
from stream.validation import Rejection, Rules, Stage, validate
from tests.support.kafka import Broker, header_texts, read_topic, unique
from tests.support.scenario import ScenarioFactory
from tests.support.service import RUN_TIMEOUT_S
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

LABEL = "0b5e7c52-8a3f-4e57-b0a1-3f7c9d2e4b6a"
"""``dcr-stream produce``'s label id when none is given."""
NEW_LABEL = "9a7e3f21-6c4d-4b8a-a5e2-7d1c9b3f6e80"


def test_produce_sends_a_valid_mix_keyed_by_caller_and_receiver(
    kafka: Broker, topic_factory: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    topic = topic_factory(partitions=3)
    argv = ["produce", "--bootstrap-servers", kafka.bootstrap_servers, "--topic", topic]
    argv += ["--count", "2000", "--invalid-ratio", "0.1", "--accounts", "3"]
    argv += ["--high-priority-ratio", "0.25", "--seed", "11"]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"produced 2,000 events to {topic} in ")

    messages = read_topic(kafka.bootstrap_servers, topic)
    assert len(messages) == 2000
    now = int(time.time() * 1000)
    codes: Counter[str] = Counter()
    accounts, high = set(), 0
    for message in messages:
        result = validate(message.value(), rules=Rules(), now_ms=now)
        if isinstance(result, Rejection):
            codes[result.code] += 1
            continue
        codes["valid"] += 1
        accounts.add(result.account)
        high += result.high_priority
        assert message.key() == f"{result.caller}:{result.receiver}".encode()
        assert result.label_id == LABEL
        assert result.starts_at <= now < result.ends_at
    assert accounts == set(account_ids(3))
    assert set(codes) == {"valid", *INVALID_KINDS}
    assert 100 < sum(codes.values()) - codes["valid"] < 300  # 10% of 2000, give or take
    assert 300 < high < 600  # 25% of the valid ones


def test_produce_at_a_rate_for_a_duration(
    kafka: Broker, topic_factory: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    topic = topic_factory()
    argv = ["produce", "--bootstrap-servers", kafka.bootstrap_servers, "--topic", topic]
    assert main([*argv, "--rate", "200", "--duration", "1"]) == 0
    capsys.readouterr()
    sent = len(read_topic(kafka.bootstrap_servers, topic))
    assert 0 < sent <= 200  # a rate and a duration: at most their product


def test_produce_creates_a_missing_topic(
    kafka: Broker, admin: AdminClient, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = unique("created")
    argv = ["produce", "--bootstrap-servers", kafka.bootstrap_servers, "--topic", topic]
    try:
        assert main([*argv, "--count", "10", "--partitions", "5"]) == 0
        assert len(admin.list_topics(topic, timeout=30).topics[topic].partitions) == 5
        assert len(read_topic(kafka.bootstrap_servers, topic)) == 10
    finally:
        admin.delete_topics([topic])[topic].result(30)
    capsys.readouterr()


def write_dead_letters(kafka: Broker, dlq: str, source: str) -> None:
    """Six dead letters as the service writes them: partitions 0 and 1, offsets 10..12, a code and
    stage per offset, and a header of the producer's own."""
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    kinds: dict[int, tuple[str, Stage]] = {
        10: ("not_json", "decode"),
        11: ("api_rejected", "api"),
        12: ("expired", "expired"),
    }
    for partition in (0, 1):
        for offset, (code, stage) in kinds.items():
            original = Message(
                topic=source,
                partition=partition,
                offset=offset,
                key=b"key-%d-%d" % (partition, offset),
                value=b'{"value": %d}' % offset,
                headers=[("trace-id", b"t%d" % offset)],
            )
            rejection = Rejection(code=code, field=None, message="why", stage=stage)
            status = 400 if stage == "api" else None
            letter = build(original, rejection, http_status=status, http_body=b"{}")
            producer.produce(dlq, letter.value, letter.key, headers=letter.headers)
    assert producer.flush(30) == 0


@pytest.mark.parametrize(
    ("filters", "selected"),
    [
        ([], {(0, 10), (0, 11), (0, 12), (1, 10), (1, 11), (1, 12)}),
        (["--stage", "api"], {(0, 11), (1, 11)}),
        (["--code", "not_json,expired"], {(0, 10), (0, 12), (1, 10), (1, 12)}),
        (["--code", "expired", "--code", "not_json", "--partition", "1"], {(1, 10), (1, 12)}),
        (["--offset-from", "11", "--offset-to", "11"], {(0, 11), (1, 11)}),
        (["--stage", "validate"], set()),
    ],
)
def test_replay_dry_run_lists_the_selection_and_sends_nothing(
    kafka: Broker,
    topic_factory: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
    filters: list[str],
    selected: set[tuple[int, int]],
) -> None:
    source, dlq = topic_factory(partitions=2), topic_factory()
    write_dead_letters(kafka, dlq, source)
    argv = ["replay", "--bootstrap-servers", kafka.bootstrap_servers, "--from", dlq, "--dry-run"]
    assert main([*argv, *filters]) == 0
    out, err = capsys.readouterr()
    listed = set()
    for line in out.splitlines():
        where, code, stage, arrow, target = line.split()
        assert (arrow, target) == ("->", source)
        partition, offset = where.removeprefix(f"{source}[").split("]@")
        listed.add((int(partition), int(offset)))
        assert (code, stage) in {
            ("not_json", "decode"),
            ("api_rejected", "api"),
            ("expired", "expired"),
        }
    assert listed == selected
    assert err == f"would replay {len(selected)} of 6 dead letters in {dlq}\n"
    assert read_topic(kafka.bootstrap_servers, source) == []


def test_replay_keeps_key_value_and_other_headers_and_strips_ours(
    kafka: Broker, topic_factory: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    source, dlq, target = topic_factory(partitions=2), topic_factory(), topic_factory()
    write_dead_letters(kafka, dlq, source)
    argv = ["replay", "--bootstrap-servers", kafka.bootstrap_servers, "--from", dlq]
    assert main([*argv, "--to", target, "--partition", "0"]) == 0
    assert capsys.readouterr().err == f"replayed 3 of 6 dead letters in {dlq}\n"

    replayed = read_topic(kafka.bootstrap_servers, target)
    assert sorted((m.key(), m.value(), m.headers()) for m in replayed) == [
        (b"key-0-%d" % offset, b'{"value": %d}' % offset, [("trace-id", b"t%d" % offset)])
        for offset in (10, 11, 12)
    ]
    assert read_topic(kafka.bootstrap_servers, source) == []


def test_replay_of_a_missing_topic_is_one_line(
    kafka: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["replay", "--bootstrap-servers", kafka.bootstrap_servers, "--from", unique("none")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "does not exist; check --from" in err


def test_unknown_labels_replayed_after_the_label_is_registered_are_delivered(
    kafka: Broker, scenario: ScenarioFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = account_ids(2)
    run = scenario(partitions=4, labels={account: frozenset({LABEL}) for account in accounts})
    topic, sandbox = run.topic, run.sandbox
    mix = Mix(
        accounts=accounts,
        label_ids=(LABEL,),
        invalid_ratio=0.02,
        unregistered_label_ids=(NEW_LABEL,),
        unregistered_ratio=0.01,
        seed=5,
    )
    made = list(events(mix, 3000))
    produced = produce({"bootstrap.servers": kafka.bootstrap_servers}, topic, iter(made))
    assert produced.failed == 0
    receivers = {kind: {e.key.split(b":")[1].decode() for e in made if e.expect == kind}
                 for kind in ("valid", "unregistered_label")}  # fmt: skip
    refused = len(receivers["unregistered_label"])
    invalid = sum(e.expect not in receivers for e in made)
    assert refused > 10

    service = run.service()
    wait_until(run.delivered(receivers["valid"]), timeout_s=RUN_TIMEOUT_S, what="deliveries")
    dead = read_topic(kafka.bootstrap_servers, f"{topic}.dlq", at_least=refused + invalid)
    # The accounts' label registries do not list it: dead-lettered before any request.
    codes = Counter(header_texts(m)["dcr.error.code"] for m in dead)
    assert codes["unknown_label"] == refused
    assert not set(sandbox.accepted_receivers()) & receivers["unregistered_label"]

    def register() -> None:
        for account in accounts:
            sandbox.sandbox.learn_labels(account, [NEW_LABEL])

    sandbox.run(register)
    argv = ["replay", "--bootstrap-servers", kafka.bootstrap_servers, "--from", f"{topic}.dlq"]
    assert main([*argv, "--code", "unknown_label"]) == 0
    assert capsys.readouterr().err == (
        f"replayed {refused} of {refused + invalid} dead letters in {topic}.dlq\n"
    )

    wanted = receivers["valid"] | receivers["unregistered_label"]
    wait_until(run.delivered(wanted), timeout_s=RUN_TIMEOUT_S, what="replayed deliveries")

    with run.offsets() as offsets:

        def committed_to_the_end() -> bool:
            ends = offsets.ends()
            return offsets.committed() == ends and sum(ends) == 3000 + refused

        wait_until(committed_to_the_end, timeout_s=RUN_TIMEOUT_S, what="commits")
    service.signal(signal.SIGTERM)
    assert service.wait(30) == 0
    accepted = sandbox.accepted_receivers()
    assert all(accepted[r] == 1 for r in receivers["unregistered_label"])
    assert set(accepted) == wanted
    assert (
        len(read_topic(kafka.bootstrap_servers, f"{topic}.dlq", at_least=refused + invalid))
        == refused + invalid
    )
