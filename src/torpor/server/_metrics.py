"""`/metrics`: the store's state in Prometheus text format, computed when scraped.

The server executes no runs, so everything here is read from the store: runs by status and
bytes stored (aggregate queries), snapshot latencies (from the snapshot records, all time),
and step latencies (from log entries that land while the server is up).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from .. import __version__
from .._model import RunStatus
from ..store import PostgresStore, SqlStore, Store

__all__ = ["STEP_KINDS", "StoreMetrics"]

# Log entries that record a journaled call's result: plain steps, and the agent's model and
# tool calls (which go through the same step machinery).
STEP_KINDS = ("step", "model_call", "tool_result")

_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_SNAPSHOT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Runs whose updated_at is this close before the previous scrape are looked at again: a
# transaction may commit a moment after the time it stamped. Entries are counted by seq, so
# looking twice never counts twice.
_SLACK_S = 5.0


class _Histogram:
    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def rows(self) -> list[tuple[str, float]]:
        out = [(_le(b), float(c)) for b, c in zip(self.buckets, self.counts, strict=True)]
        return [*out, ("+Inf", float(self.total))]


def _le(bound: float) -> str:
    return repr(float(bound))


class _StepWatcher:
    """Step latencies from the log: for each entry of a step kind, the time since the entry
    before it in the same run (the step's execution plus any workflow code in between).

    Only entries created after the server started count, so the histogram is a counter that
    starts at zero with the server, as Prometheus expects.
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self.since = started
        self.cursors: dict[str, tuple[int, float]] = {}  # run -> (last seq seen, its time)
        self.histograms = {kind: _Histogram(_STEP_BUCKETS) for kind in STEP_KINDS}
        self.lock = threading.Lock()

    def scan(self, store: SqlStore) -> None:
        with self.lock:
            now = time.time()
            with store._read() as tx:  # the Store interface has no "runs changed since" query
                changed = tx.execute(
                    "SELECT id, last_seq, status FROM torpor_runs WHERE updated_at >= ?",
                    (self.since - _SLACK_S,),
                ).fetchall()
                for run_id, last_seq, status in changed:
                    seen, seen_at = self.cursors.get(run_id, (0, 0.0))
                    if int(last_seq) > seen:
                        self._observe(tx, run_id, seen, seen_at)
                    if RunStatus(status).terminal:
                        self.cursors.pop(run_id, None)
            self.since = now

    def _observe(self, tx: Any, run_id: str, seen: int, seen_at: float) -> None:
        # Payloads are left out: they may be megabytes, and only times are needed.
        rows = tx.execute(
            "SELECT seq, kind, created_at FROM torpor_log WHERE run_id = ? AND seq > ? "
            "ORDER BY seq",
            (run_id, seen),
        ).fetchall()
        previous = seen_at if seen else None
        for seq, kind, created_at in rows:
            created = float(created_at)
            if previous is not None and kind in self.histograms and created >= self.started:
                self.histograms[kind].observe(max(0.0, created - previous))
            previous = created
            self.cursors[run_id] = (int(seq), created)


class StoreMetrics(Collector):
    """A Prometheus collector over one store; `render` gives the text exposition."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.steps = _StepWatcher(time.time())
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("torpor_info", "This torpor server.", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        counts = self._runs_by_status()
        runs = GaugeMetricFamily("torpor_runs", "Runs in the store, by status.", labels=["status"])
        for status in RunStatus:
            runs.add_metric([status.value], float(counts.get(status.value, 0)))
        yield runs
        if not isinstance(self.store, SqlStore):
            return
        yield from self._sql_metrics(self.store)

    def _runs_by_status(self) -> dict[str, int]:
        if isinstance(self.store, SqlStore):
            with self.store._read() as tx:
                rows = tx.execute("SELECT status, COUNT(*) FROM torpor_runs GROUP BY status")
                return {str(s): int(n) for s, n in rows.fetchall()}
        counts: dict[str, int] = {}
        for run in self.store.list_runs():
            counts[run.status.value] = counts.get(run.status.value, 0) + 1
        return counts

    def _sql_metrics(self, store: SqlStore) -> Iterator[Metric]:
        with store._read() as tx:
            entries = tx.execute("SELECT COALESCE(SUM(last_seq), 0) FROM torpor_runs").fetchone()
            snap = _snapshot_rows(tx)
            database = _database_bytes(store, tx)
        yield CounterMetricFamily(
            "torpor_log_entries", "Entries in all runs' context logs.", value=float(entries[0])
        )
        stored = GaugeMetricFamily(
            "torpor_store_bytes",
            "Bytes stored: the database (runs, logs, events, snapshot records) and the "
            "snapshots' chunks (as recorded when each snapshot was written).",
            labels=["part"],
        )
        stored.add_metric(["database"], float(database))
        stored.add_metric(["snapshots"], float(snap["stored"]))
        yield stored
        raw = GaugeMetricFamily(
            "torpor_snapshot_raw_bytes", "Bytes of the snapshots before deduplication."
        )
        raw.add_metric([], float(snap["raw"]))
        yield raw
        for name, what in (("dump", "dumping (checkpointing)"), ("store", "storing")):
            hist = HistogramMetricFamily(
                f"torpor_snapshot_{name}_seconds", f"Time spent {what} each snapshot."
            )
            hist.add_metric([], snap[name], snap[f"{name}_sum"])
            yield hist
        self.steps.scan(store)
        steps = HistogramMetricFamily(
            "torpor_step_seconds",
            "Time from the log entry before a step's result to the result, for steps "
            "recorded while this server is up.",
            labels=["kind"],
        )
        for kind, hist_ in self.steps.histograms.items():
            steps.add_metric([kind], hist_.rows(), hist_.sum)
        yield steps


def _snapshot_rows(tx: Any) -> dict[str, Any]:
    """Sizes and cumulative latency buckets of all snapshots, in one query."""
    cases: list[str] = []
    params: list[float] = []
    for column in ("dump_ms", "store_ms"):
        for bound in _SNAPSHOT_BUCKETS:
            cases.append(f"COALESCE(SUM(CASE WHEN {column} <= ? THEN 1 ELSE 0 END), 0)")
            params.append(bound * 1000.0)
    row = tx.execute(
        "SELECT COUNT(*), COALESCE(SUM(raw_bytes), 0), COALESCE(SUM(stored_bytes), 0), "
        "COALESCE(SUM(dump_ms), 0), COALESCE(SUM(store_ms), 0), "
        + ", ".join(cases)
        + " FROM torpor_snapshots",
        params,
    ).fetchone()
    count = float(row[0])
    n = len(_SNAPSHOT_BUCKETS)
    out: dict[str, Any] = {"raw": int(row[1]), "stored": int(row[2])}
    for i, name in enumerate(("dump", "store")):
        counts = row[5 + i * n : 5 + (i + 1) * n]
        buckets = [(_le(b), float(c)) for b, c in zip(_SNAPSHOT_BUCKETS, counts, strict=True)]
        out[name] = [*buckets, ("+Inf", count)]
        out[f"{name}_sum"] = float(row[3 + i]) / 1000.0
    return out


def _database_bytes(store: SqlStore, tx: Any) -> int:
    if isinstance(store, PostgresStore):
        row = tx.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND c.relname LIKE 'torpor%' AND n.nspname = current_schema()"
        ).fetchone()
        return int(row[0])
    page_count = tx.execute("PRAGMA page_count").fetchone()[0]
    page_size = tx.execute("PRAGMA page_size").fetchone()[0]
    return int(page_count) * int(page_size)
