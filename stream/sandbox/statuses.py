"""What the sandbox's batch status endpoint says about each accepted record (docs/sandbox.md).

The real API decides later, per record, whether it was pushed; the sandbox decides by rules on the
receiver number, so a test knows in advance which records fail and why:

- ``failures``: receivers starting with a prefix fail with a reason (``not_truecaller_user``,
  ``os_not_supported``, ``app_version_not_supported``, ``push_failed``, ``invalid_input``), the
  first matching prefix wins;
- ``pending_s``: records (those whose receiver starts with ``pending_prefix``; every record when it
  is empty) stay ``pending`` for this long after their batch arrived, then take their final status.

Everything else is ``success``. Prefixes are compared with the receiver's digits (a ``+`` in a
prefix is ignored). The rules can change while the sandbox runs (``set_statuses``,
``/_sandbox/statuses``); a status is worked out when it is asked for.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Struct

__all__ = ["REASONS", "StatusRules", "parse_failure", "record_status"]

REASONS: dict[str, str] = {
    "not_truecaller_user": "Receiver is not a Truecaller user",
    "os_not_supported": "OS not supported (Android only)",
    "app_version_not_supported": "App version not supported",
    "push_failed": "Failed to push (device unreachable)",
    "invalid_input": "Invalid input",
}
"""The documented failure reasons, and the message the sandbox gives each."""


class StatusRules(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which accepted records the status endpoint reports failed, or still pending."""

    failures: tuple[tuple[str, str], ...] = ()
    """(receiver prefix, reason of ``REASONS``), first match wins."""
    pending_s: float = 0.0
    """Records stay ``pending`` this long after their batch arrived."""
    pending_prefix: str = ""
    """Only receivers starting with it pend (empty: every record)."""

    def __post_init__(self) -> None:
        for prefix, reason in self.failures:
            if reason not in REASONS:
                raise ValueError(f"unknown reason {reason!r}; the reasons are {', '.join(REASONS)}")
            if not prefix.lstrip("+"):
                raise ValueError("a failure prefix must hold digits")
        if self.pending_s < 0:
            raise ValueError("pending_s must not be negative")

    def changed(self, **changes: Any) -> StatusRules:
        """These rules with the named ones changed; a bad name or value raises ``ValueError``."""
        try:
            return msgspec.convert({**msgspec.structs.asdict(self), **changes}, StatusRules)
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None


def parse_failure(text: str) -> tuple[str, str]:
    """``REASON=PREFIX`` → ``(prefix, reason)``, as ``--fail-prefix`` takes it."""
    reason, _, prefix = text.partition("=")
    if reason.strip() not in REASONS or not prefix.strip().lstrip("+"):
        raise ValueError(f"--fail-prefix wants REASON=PREFIX (REASON: {', '.join(REASONS)})")
    return prefix.strip(), reason.strip()


def record_status(rules: StatusRules, receiver: str, age_s: float) -> dict[str, str]:
    """The ``status_info`` of a record for ``receiver`` whose batch arrived ``age_s`` ago."""
    if age_s < rules.pending_s and receiver.startswith(rules.pending_prefix.lstrip("+")):
        return {"status": "pending", "message": "Record is being processed"}
    for prefix, reason in rules.failures:
        if receiver.startswith(prefix.lstrip("+")):
            return {"status": "failed", "reason": reason, "message": REASONS[reason]}
    return {"status": "success", "message": "Record pushed successfully"}
