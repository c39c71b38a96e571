"""``dcr-stream replay``: send dead letters back to an input topic once their cause is fixed.

The dead-letter topic is read from its beginning to the end it has when the replay starts (records
written meanwhile wait for the next run), without joining a consumer group or committing anything,
so a replay can be repeated, first with ``dry_run``. Each record that passes the ``Selection`` is
produced to ``to``, or else to the topic it was consumed from (``dcr.source.topic``), with its
original key, value and headers: every ``dcr.*`` header is stripped, so a record that fails again is
dead-lettered afresh and its headers describe the new failure only.

Every run reads the whole topic: replaying the same records twice sends them twice. Narrow a run
with the selection (code, stage, source partition and offsets).

A dead letter written cut (``dcr.error.truncated``, docs/dlq.md#too-large) holds only a prefix of
the original: it is never sent, only counted and listed, since a replay would pass the prefix off
as the event. Its ``dcr.source.*`` headers say where the original can be read while the input
topic keeps it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO, get_args

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from stream.config import default_dlq_topic as _default_dlq
from stream.dlq import (
    ERROR_CODE,
    ERROR_STAGE,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    TRUNCATED,
    is_ours,
)
from stream.errors import ConfigError, DcrStreamError
from stream.settings import setting
from stream.tools.args import arg_type
from stream.tools.kafka import (
    CONNECT_TIMEOUT_S,
    add_bootstrap_servers,
    kafka_config,
    topic_partitions,
)
from stream.tools.progress import Progress
from stream.validation import CODES, Stage

__all__ = [
    "Letter",
    "Replayed",
    "Selection",
    "add_parser",
    "default_dlq_topic",
    "replay",
    "run",
]

_IDLE_TIMEOUT_S = 30.0
"""How long reading may go without a single record or end-of-partition before it gives up."""
_FLUSH_TIMEOUT_S = 120.0


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which dead letters to replay; an empty set or None matches everything."""

    codes: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    partitions: frozenset[int] = frozenset()
    """Source partitions (``dcr.source.partition``)."""
    offset_from: int | None = None
    offset_to: int | None = None
    """Source offsets (``dcr.source.offset``), both inclusive."""

    def __call__(self, letter: Letter) -> bool:
        offset = letter.source_offset
        return (
            (not self.codes or letter.code in self.codes)
            and (not self.stages or letter.stage in self.stages)
            and (not self.partitions or letter.source_partition in self.partitions)
            and (self.offset_from is None or (offset is not None and offset >= self.offset_from))
            and (self.offset_to is None or (offset is not None and offset <= self.offset_to))
        )


@dataclass(frozen=True, kw_only=True)
class Letter:
    """A dead letter as read: its ``dcr.*`` headers parsed, the rest kept to send again."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]
    """The original headers, without any ``dcr.*`` one."""
    code: str
    stage: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    truncated: str = ""
    """What was cut to make the dead letter fit (``dcr.error.truncated``); empty when whole."""

    @classmethod
    def of(cls, message: Message) -> Letter:
        ours: dict[str, str] = {}
        kept: list[tuple[str, str | bytes | None]] = []
        raw = message.headers() or []
        for name, value in raw.items() if isinstance(raw, dict) else raw:
            if is_ours(name):
                ours[name] = _text(value)
            else:
                kept.append((name, value))
        return cls(
            key=message.key(),
            value=message.value(),
            headers=kept,
            code=ours.get(ERROR_CODE, ""),
            stage=ours.get(ERROR_STAGE, ""),
            source_topic=ours.get(SOURCE_TOPIC, ""),
            source_partition=_number(ours.get(SOURCE_PARTITION)),
            source_offset=_number(ours.get(SOURCE_OFFSET)),
            truncated=ours.get(TRUNCATED, ""),
        )

    def describe(self) -> str:
        """``topic[partition]@offset code stage``, as the dry run lists it."""
        where = f"{self.source_topic or '?'}[{_shown(self.source_partition)}]"
        return f"{where}@{_shown(self.source_offset)} {self.code or '-'} {self.stage or '-'}"


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value or ""


def _number(text: str | None) -> int | None:
    return int(text) if text and text.lstrip("-").isdigit() else None


def _shown(number: int | None) -> str:
    return "?" if number is None else str(number)


@dataclass(slots=True)
class Replayed:
    read: int = 0
    """Dead letters read."""
    selected: int = 0
    sent: int = 0
    """Produced and acknowledged (a dry run sends nothing)."""
    failed: int = 0
    """Not acknowledged by Kafka."""
    no_source: int = 0
    """Selected but skipped: no ``dcr.source.topic`` and no ``to``."""
    truncated: int = 0
    """Selected but skipped: written cut, the original is not in the dead-letter topic."""


def default_dlq_topic(env: Mapping[str, str]) -> str:
    """``DCR_DLQ_TOPIC``, else ``<first of DCR_KAFKA_TOPICS>.dlq``, as the service decides it."""
    topic: str | None = setting(env, "dlq_topic")
    return topic or _default_dlq(setting(env, "kafka_topics"))


def replay(
    config: Mapping[str, Any],
    dlq_topic: str,
    *,
    select: Selection,
    to: str | None = None,
    dry_run: bool = False,
    out: TextIO | None = None,
    progress: Progress | None = None,
) -> Replayed:
    """Read ``dlq_topic`` from its beginning to its current end and send the selected records on.

    A dry run writes a line per selected record to ``out`` (``Letter.describe`` and where it would
    go) and sends nothing. Raises ``DcrStreamError`` when Kafka cannot be reached or the topic does
    not exist.
    """
    if to == dlq_topic:
        raise ConfigError("--to", "must not be the dead-letter topic itself")
    result = Replayed()
    consumer = _reader(config)
    producer: Producer | None = None
    try:
        ends = _assign_all(consumer, config, dlq_topic)
        if not dry_run:
            producer = _writer(config, result)
        for message in _read_to_end(consumer, dlq_topic, ends):
            result.read += 1
            _pass_on(Letter.of(message), select, to, producer, out or sys.stdout, result)
            if progress is not None:
                progress.update(
                    lambda: f"{dlq_topic}: {result.read:,} read, {result.selected:,} selected"
                )
    finally:
        consumer.close()
        if producer is not None:
            result.failed += producer.flush(_FLUSH_TIMEOUT_S)
        if progress is not None:
            progress.close()
    if producer is not None:
        result.sent = result.selected - result.no_source - result.truncated - result.failed
    return result


def _reader(config: Mapping[str, Any]) -> Consumer:
    """A consumer that leaves no trace in Kafka: it never joins its group or commits."""
    return Consumer(
        {
            **config,
            "group.id": f"dcr-stream-replay-{uuid.uuid4().hex[:12]}",  # never joined or committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",  # records removed by retention meanwhile: go on
            "log_level": 0,  # an unreachable broker is reported once, by us
        }
    )


def _writer(config: Mapping[str, Any], result: Replayed) -> Producer:
    """An idempotent producer that counts in ``result`` what Kafka did not acknowledge."""

    def failed(error: KafkaError | None, _: Message) -> None:
        if error is not None:
            result.failed += 1

    return Producer(
        {
            **config,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 20,
            "log.connection.close": False,
            "log_level": 3,  # errors only, as for produce
            "on_delivery": failed,
        }
    )


def _assign_all(consumer: Consumer, config: Mapping[str, Any], topic: str) -> dict[int, int]:
    """Assign every partition of ``topic`` from its beginning; return the partitions that hold
    records, each with its end offset (exclusive) as of now."""
    partitions = topic_partitions(consumer, config, topic)
    if not partitions:
        raise DcrStreamError(
            f"topic {topic} does not exist; check --from (default: $DCR_DLQ_TOPIC, else the first "
            "of $DCR_KAFKA_TOPICS plus .dlq)"
        )
    ends: dict[int, int] = {}
    starts = []
    for partition in partitions:
        low, high = consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=CONNECT_TIMEOUT_S
        )
        if high > low:
            ends[partition] = high
            starts.append(TopicPartition(topic, partition, low))
    consumer.assign(starts)
    return ends


def _read_to_end(consumer: Consumer, topic: str, ends: Mapping[int, int]) -> Iterator[Message]:
    """The records of ``topic`` below ``ends`` (partition → end offset, exclusive), until every
    partition reached its end; ``DcrStreamError`` when reading fails or stalls."""
    remaining = dict(ends)
    quiet_since = time.monotonic()
    while remaining:
        messages = consumer.consume(500, 0.5)
        if messages:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > _IDLE_TIMEOUT_S:
            raise DcrStreamError(
                f"reading {topic} stalled for {_IDLE_TIMEOUT_S:.0f} s with partitions "
                f"{sorted(remaining)} unfinished; is the broker healthy?"
            )
        for message in messages:
            partition = message.partition()
            assert partition is not None
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    remaining.pop(partition, None)
                    continue
                raise DcrStreamError(f"reading {topic}: {error.str()}")
            offset = message.offset()
            if partition not in remaining or offset is None or offset >= remaining[partition]:
                continue  # written after we started: the next run's
            if offset + 1 >= remaining[partition]:
                remaining.pop(partition)
            yield message


def _pass_on(
    letter: Letter,
    select: Selection,
    to: str | None,
    producer: Producer | None,
    out: TextIO,
    result: Replayed,
) -> None:
    """Send ``letter`` to ``to`` or its source topic if it is selected; without a producer (a dry
    run), list it on ``out`` instead."""
    if not select(letter):
        return
    result.selected += 1
    target = to or letter.source_topic
    if letter.truncated:
        result.truncated += 1
        print(f"{letter.describe()} cut ({letter.truncated}): not replayed", file=out)
    elif not target:
        result.no_source += 1
    elif producer is None:
        print(f"{letter.describe()} -> {target}", file=out)
    else:
        _send(producer, target, letter)


def _send(producer: Producer, topic: str, letter: Letter) -> None:
    while True:
        try:
            producer.produce(topic, letter.value, letter.key, headers=letter.headers)
            break
        except BufferError:  # the local queue is full: let librdkafka send some
            producer.poll(0.05)
    producer.poll(0)


def run(
    *,
    env: Mapping[str, str],
    bootstrap_servers: str | None,
    dlq_topic: str | None,
    to: str | None,
    select: Selection,
    dry_run: bool,
) -> int:
    """``dcr-stream replay``; errors raise ``DcrStreamError`` (``ConfigError``) for the CLI."""
    config = kafka_config(env, bootstrap_servers)
    source = dlq_topic or default_dlq_topic(env)
    result = replay(config, source, select=select, to=to, dry_run=dry_run, progress=Progress())
    verb = "would replay" if dry_run else "replayed"
    count = result.selected - result.no_source - result.truncated if dry_run else result.sent
    print(f"{verb} {count:,} of {result.read:,} dead letters in {source}", file=sys.stderr)
    if result.no_source:
        print(
            f"dcr-stream replay: skipped {result.no_source:,} records without {SOURCE_TOPIC}; "
            "give --to",
            file=sys.stderr,
        )
    if result.truncated:
        print(
            f"dcr-stream replay: skipped {result.truncated:,} dead letters written cut "
            f"({TRUNCATED}): each holds only a prefix of its original, which is at its "
            f"{SOURCE_TOPIC}[partition]@offset while the topic keeps it",
            file=sys.stderr,
        )
    if result.failed:
        print(
            f"dcr-stream replay: {result.failed:,} records were not acknowledged by Kafka",
            file=sys.stderr,
        )
        return 1
    return 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``dcr-stream replay``."""
    parser = commands.add_parser(
        "replay",
        help="re-publish dead-lettered records to an input topic once their cause is fixed",
        description=(
            "Read the dead-letter topic from its beginning to its current end (no consumer\n"
            "group, nothing committed) and produce the records that match every filter given\n"
            "to --to, or else to the topic each was consumed from (its dcr.source.topic header),\n"
            "with the original key, value and headers: every dcr.* header is stripped. A dead\n"
            "letter written cut (dcr.error.truncated) holds only a prefix: it is listed, never\n"
            "sent. Filters\n"
            "take source coordinates and the dead-letter headers (see the README's rejection\n"
            "codes). Each run reads the whole topic, so replaying twice sends twice: try\n"
            "--dry-run first, which prints a line per record,\n"
            "  SOURCE_TOPIC[PARTITION]@OFFSET CODE STAGE -> TARGET\n"
            "and a count on stderr. Exit status: 0 done, 1 Kafka unreachable or a record not\n"
            "acknowledged, 2 bad usage."
        ),
        epilog=(
            "examples:\n"
            "  dcr-stream replay --stage api --dry-run\n"
            "  dcr-stream replay --from call-intents.dlq --stage api --code api_rejected\n"
            "  dcr-stream replay --code expired,timestamp_seconds --to call-intents-fixed\n"
            "  dcr-stream replay --partition 3 --offset-from 1200 --offset-to 1299 "
            "--bootstrap-servers kafka:9092\n"
            "  DCR_KAFKA_TOPICS=orders-calls dcr-stream replay --dry-run"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_bootstrap_servers(parser)
    parser.add_argument(
        "--from",
        dest="from_topic",
        metavar="TOPIC",
        help="the dead-letter topic (default: $DCR_DLQ_TOPIC, else the first of "
        "$DCR_KAFKA_TOPICS plus .dlq, else call-intents.dlq)",
    )
    parser.add_argument(
        "--to", metavar="TOPIC", help="where to send (default: each record's dcr.source.topic)"
    )
    parser.add_argument(
        "--code",
        action="append",
        default=[],
        type=arg_type(_codes),
        metavar="CODE[,CODE]",
        help="only these dcr.error.code values; repeatable",
    )
    parser.add_argument(
        "--stage",
        action="append",
        default=[],
        choices=get_args(Stage),
        help="only this dcr.error.stage; repeatable",
    )
    parser.add_argument(
        "--partition",
        action="append",
        default=[],
        type=int,
        metavar="N",
        help="only records from this source partition; repeatable",
    )
    parser.add_argument(
        "--offset-from", type=int, metavar="N", help="only source offsets from N (inclusive)"
    )
    parser.add_argument(
        "--offset-to", type=int, metavar="N", help="only source offsets up to N (inclusive)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be sent; send nothing"
    )
    parser.set_defaults(handler=_handle)


def _codes(text: str) -> list[str]:
    """``CODE[,CODE]``, each a rejection code of ``stream.validation.CODES``."""
    codes = [code.strip() for code in text.split(",") if code.strip()]
    unknown = [code for code in codes if code not in CODES]
    if unknown or not codes:
        raise ValueError(
            f"unknown code {', '.join(unknown) or repr(text)}; the codes are {', '.join(CODES)}"
        )
    return codes


def _handle(args: argparse.Namespace) -> int:
    select = Selection(
        codes=frozenset(code for codes in args.code for code in codes),
        stages=frozenset(args.stage),
        partitions=frozenset(args.partition),
        offset_from=args.offset_from,
        offset_to=args.offset_to,
    )
    return run(
        env=os.environ,
        bootstrap_servers=args.bootstrap_servers,
        dlq_topic=args.from_topic,
        to=args.to,
        select=select,
        dry_run=args.dry_run,
    )
