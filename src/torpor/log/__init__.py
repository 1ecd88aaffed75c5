"""The context log: per run, append-only entries of everything the model saw and did, and
how its history reads (the timeline of calls through rollbacks, failures, waits)."""

from __future__ import annotations

from ._log import ContextLog, describe_entry
from ._timeline import (
    FAILURE_KINDS,
    MAX_FAILURES,
    Timeline,
    abandoned_snapshots,
    describe_call,
    failures_in_a_row,
    recorded_since,
    retry_position,
    wait_is_over,
)

__all__ = [
    "FAILURE_KINDS",
    "MAX_FAILURES",
    "ContextLog",
    "Timeline",
    "abandoned_snapshots",
    "describe_call",
    "describe_entry",
    "failures_in_a_row",
    "recorded_since",
    "retry_position",
    "wait_is_over",
]
