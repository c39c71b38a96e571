"""``dcr-stream sandbox``: a local stand-in for the Dynamic Call Records API (docs/sandbox.md).

A tool beside the service, never imported by it: tests, the demo and the benchmarks run the service
against it, and operators can run it in staging.
"""

from stream.sandbox.batches import MAX_RECORDS, Accepted
from stream.sandbox.server import (
    AccountStats,
    Clock,
    Faults,
    ManualClock,
    Sandbox,
    SandboxConfig,
    Stats,
    parse_labels,
    serve,
)

__all__ = [
    "MAX_RECORDS",
    "Accepted",
    "AccountStats",
    "Clock",
    "Faults",
    "ManualClock",
    "Sandbox",
    "SandboxConfig",
    "Stats",
    "parse_labels",
    "serve",
]
