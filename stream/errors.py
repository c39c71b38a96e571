"""The exception tree. Every error the package raises on purpose is a ``DcrStreamError``::

    DcrStreamError
    ├── ConfigError          a setting is missing or invalid (exit status 2)
    ├── AuthError            no token could be had (minting refused, token file unreadable)
    ├── DeadLetterError      Kafka did not acknowledge a dead-letter write
    ├── ReceiptError         Kafka did not acknowledge a receipt (reconciliation needs it)
    ├── TopicError           a topic it needs is missing and cannot be made, or cannot be seen
    └── BrokerError          the tools' local Kafka broker could not be fetched or started

Rejected events and refused API records are not exceptions: they are ``Rejection`` values.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BrokerError",
    "ConfigError",
    "DcrStreamError",
    "DeadLetterError",
    "ReceiptError",
    "TopicError",
]


class DcrStreamError(Exception):
    """The root of every error raised on purpose by dcr-stream."""


class ConfigError(DcrStreamError):
    """A setting is missing or invalid; ``variable`` names it as the operator wrote it."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


class AuthError(DcrStreamError):
    """No API token could be obtained for ``account``."""

    def __init__(
        self,
        account: str,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        reached: bool = True,
        refused: bool = False,
    ) -> None:
        super().__init__(f"account {account}: {message}")
        self.account = account
        self.status = status
        self.retry_after_s = retry_after_s
        """A refused mint's ``Retry-After``, if it sent one."""
        self.reached = reached
        """False when the request cannot have reached the API (it could not connect)."""
        self.refused = refused
        """True when no configured credential covers the account (not a passing failure)."""


class DeadLetterError(DcrStreamError):
    """A dead-letter write for the record at topic/partition/offset was not acknowledged;
    ``permanent`` when no retry can cure it (the topic is missing or forbidden, or the letter is
    too large even cut)."""

    def __init__(
        self, topic: str, partition: int, offset: int, reason: str, *, permanent: bool = False
    ) -> None:
        super().__init__(f"dead-letter write for {topic}[{partition}]@{offset} failed: {reason}")
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.reason = reason
        self.permanent = permanent


class ReceiptError(DcrStreamError):
    """A receipt written to ``topic`` was not acknowledged."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"receipt write to {topic} failed: {reason}")
        self.topic = topic
        self.reason = reason


class BrokerError(DcrStreamError):
    """The local broker (``stream.devkafka``) could not be fetched or started; the message carries
    the tail of its log."""


class TopicError(DcrStreamError):
    """The topic ``topic`` cannot be had as needed (docs/operations.md#acls); the message says why
    and what an operator can do."""

    def __init__(self, topic: str, message: str) -> None:
        super().__init__(f"topic {topic} {message}")
        self.topic = topic
