"""How many times in a row a run's executions failed for reasons of torpor's own."""

from __future__ import annotations

from ..store import Store

__all__ = ["FAILURE_KINDS", "MAX_FAILURES", "failures_in_a_row"]

# Log entries that record an execution ended by torpor, not by the workflow: the run is
# retried elsewhere, and failed after MAX_FAILURES of them in a row.
FAILURE_KINDS = ("sandbox_died", "executor_failed")
MAX_FAILURES = 3
# What a new execution writes before its workflow makes progress: not progress itself.
_CLAIM_KINDS = ("restored", "recovered", "warning")


def failures_in_a_row(store: Store, run_id: str) -> int:
    """Failures since the run last made progress. Counting claims instead (the run's
    ``attempt``) would fail a long-lived run that was woken three times at its first
    hiccup."""
    count = 0
    for entry in reversed(store.read(run_id)):
        if entry.kind in FAILURE_KINDS:
            count += 1
        elif entry.kind not in _CLAIM_KINDS:
            break
    return count
