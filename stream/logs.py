"""Logs: one JSON object per line on stdout (docs/operations.md)."""

from __future__ import annotations

import logging
import sys
import time

import msgspec

__all__ = ["setup"]

_encoder = msgspec.json.Encoder()


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def setup(level: str) -> None:
    """Route every logger (ours and librdkafka's Python-side ones) to JSON lines on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_JsonLines())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
