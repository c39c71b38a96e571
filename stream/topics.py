"""Topics the service and its tools need: looked at first, created only when missing
(docs/operations.md#acls).

On a least-privilege cluster the platform team makes the topics and the service may not CREATE:
asking to create a topic that exists would fail there for good, so every place that needs a topic
describes it first (DESCRIBE on the topic is all that takes) and creates only what is missing, or
grows only a topic with too few partitions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from stream.errors import TopicError

__all__ = ["TopicSpec", "ensure_topics", "partitions"]

_log = logging.getLogger("stream.topics")

TIMEOUT_S = 30.0
"""Each admin request's bound: a broker that does not answer within it is an error to report."""

_VISIBLE_POLL_S = 0.02
"""How often a topic just created is looked for until the metadata lists it (milliseconds)."""

_MARGIN_S = 5.0
"""Waited beyond a request's bound, so that librdkafka reports the timeout (with its reason)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicSpec:
    """A topic as its user needs it."""

    name: str
    partitions: int
    """Partitions of the topic when it is created here; with ``grow``, the least it must have."""
    config: Mapping[str, str] = field(default_factory=dict)
    """Topic settings when it is created here (an existing topic's are left alone)."""
    grow: bool = False
    """Add partitions to an existing topic that has fewer (the token topic: one per slot)."""


def ensure_topics(
    admin_config: Mapping[str, Any], specs: Iterable[TopicSpec], *, timeout_s: float = TIMEOUT_S
) -> dict[str, int]:
    """Each topic's partition count, once it exists as ``specs`` need it:

    1. describe them all (DESCRIBE on each topic);
    2. create only those that do not exist (CREATE: only then);
    3. grow only a ``grow`` topic with fewer partitions than asked (ALTER: only then).

    A topic another replica created or grew meanwhile counts as done. Raises ``TopicError``
    naming the topic, what was needed and the broker's reason (not authorised, unreachable, ...).
    """
    wanted = {spec.name: spec for spec in specs}
    admin = AdminClient(dict(admin_config))
    found = _describe(admin, list(wanted), timeout_s)
    missing = [spec for name, spec in wanted.items() if name not in found]
    if missing:
        _create(admin, missing, timeout_s)
        found |= _visible(admin, {spec.name: 1 for spec in missing}, timeout_s)
    for spec in wanted.values():
        if spec.grow and found[spec.name] < spec.partitions:
            _grow(admin, spec, found[spec.name], timeout_s)
            found |= _visible(admin, {spec.name: spec.partitions}, timeout_s)
    return {name: found[name] for name in wanted}


def partitions(
    admin_config: Mapping[str, Any], names: Iterable[str], *, timeout_s: float = TIMEOUT_S
) -> dict[str, int]:
    """Partition counts of those of ``names`` that exist, creating none (DESCRIBE on each);
    ``TopicError`` for any answer but "does not exist"."""
    return _describe(AdminClient(dict(admin_config)), list(names), timeout_s)


def _visible(admin: AdminClient, least: Mapping[str, int], timeout_s: float) -> dict[str, int]:
    """Partition counts of topics just created or grown, once the broker's metadata lists them
    with at least ``least`` partitions each: a client that subscribes before that is told the
    topic is not available (or sees the old partitions) and looks again only a second or two later
    (which delays the token slots, and with them every first request)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = _describe(admin, list(least), timeout_s)
        short = sorted(name for name, n in least.items() if found.get(name, 0) < n)
        if not short:
            return found
        if time.monotonic() > deadline:
            raise TopicError(short[0], f"was changed but not listed so within {timeout_s:g} s")
        time.sleep(_VISIBLE_POLL_S)


def _describe(admin: AdminClient, names: list[str], timeout_s: float) -> dict[str, int]:
    """Partition counts of the topics that exist; a topic that does not is left out, any other
    answer is an error."""
    futures = admin.describe_topics(TopicCollection(names), request_timeout=timeout_s)
    found = {}
    for name, future in futures.items():
        try:
            found[name] = len(future.result(timeout_s + _MARGIN_S).partitions)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            if error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                # Kafka does not say whether a topic one may not describe exists.
                raise TopicError(
                    name,
                    f"cannot be described ({_reason(error)}): allow this principal DESCRIBE on it "
                    "(docs/operations.md#acls), and create it beforehand if it does not exist",
                ) from None
            raise TopicError(name, f"cannot be described: {_reason(error)}") from None
    return found


def _create(admin: AdminClient, specs: list[TopicSpec], timeout_s: float) -> None:
    topics = [
        NewTopic(spec.name, num_partitions=spec.partitions, config=dict(spec.config))
        for spec in specs
    ]
    futures = admin.create_topics(topics, request_timeout=timeout_s)
    for spec in specs:
        try:
            futures[spec.name].result(timeout_s + _MARGIN_S)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another replica made it meanwhile
            raise TopicError(
                spec.name,
                f"does not exist and cannot be created ({_reason(error)}); create it beforehand "
                f"with {spec.partitions} partitions, or allow this principal CREATE",
            ) from None
        _log.info("created topic %s with %d partitions", spec.name, spec.partitions)


def _grow(admin: AdminClient, spec: TopicSpec, has: int, timeout_s: float) -> None:
    future = admin.create_partitions(
        [NewPartitions(spec.name, spec.partitions)], request_timeout=timeout_s
    )[spec.name]
    try:
        future.result(timeout_s + _MARGIN_S)
    except KafkaException as exc:
        error = exc.args[0]
        if error.code() == KafkaError.INVALID_PARTITIONS:
            return  # another replica grew it first
        raise TopicError(
            spec.name,
            f"has {has} partitions, needs {spec.partitions}, and cannot be grown "
            f"({_reason(error)}); add them beforehand, or allow this principal ALTER",
        ) from None
    _log.info("grew topic %s from %d to %d partitions", spec.name, has, spec.partitions)


def _reason(error: object) -> str:
    return error.str() if isinstance(error, KafkaError) else str(error)
