"""Appends per second to the context log, on SQLite and PostgreSQL.

Two shapes: one process appending to one run's log, and 8 processes each appending to its
own run at the same time (aggregate rate). Each torpor figure is set beside a bare INSERT of
the same row with the same durability setting, measured in the same run: the ratio is what
torpor's bookkeeping (dense seqs, fencing, size checks) costs.

usage: .venv/bin/python bench/log_append.py [--appends N] [--repeat R] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_spread, progress, save_results, write_section
from torpor import Settings
from torpor.store import open_store
from torpor.testing import TemporaryPostgres

PAYLOAD = {
    "role": "assistant",
    "text": "I will list the files in the workspace and then read the plan. " * 3,
    "usage": {"input_tokens": 1234, "output_tokens": 56},
}
WRITERS = 8


def _settings(url: str, synchronous: str) -> Settings:
    base = Settings.from_env()
    return Settings(base.home, url, base.blob_url, sqlite_synchronous=synchronous)


def _torpor_appends(url: str, synchronous: str, run_id: str, count: int, start: Any) -> None:
    with open_store(settings=_settings(url, synchronous)) as store:
        store.append(run_id, "warmup", {})
        start.wait()  # a barrier: every writer connected, then all go
        for _ in range(count):
            store.append(run_id, "assistant", PAYLOAD)


def _bare_appends(url: str, synchronous: str, run_id: str, count: int, start: Any) -> None:
    """The floor: one INSERT per transaction into an equivalent table, nothing else."""
    text = json.dumps(PAYLOAD, separators=(",", ":"))
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url[len("sqlite://") :], isolation_level=None, timeout=60)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        sql = "INSERT INTO bare_log (run_id, seq, kind, payload, created_at) VALUES (?,?,?,?,?)"
        start.wait()  # a barrier: every writer connected, then all go
        for seq in range(1, count + 1):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql, (run_id, seq, "assistant", text, time.time()))
            conn.execute("COMMIT")
        conn.close()
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            sql = (
                "INSERT INTO bare_log (run_id, seq, kind, payload, created_at) "
                "VALUES (%s,%s,%s,%s,%s)"
            )
            start.wait()  # a barrier: every writer connected, then all go
            for seq in range(1, count + 1):
                conn.execute(sql, (run_id, seq, "assistant", text, time.time()))


def _prepare_bare(url: str) -> None:
    ddl = (
        "CREATE TABLE IF NOT EXISTS bare_log (run_id TEXT NOT NULL, seq BIGINT NOT NULL, "
        "kind TEXT NOT NULL, payload TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, "
        "PRIMARY KEY (run_id, seq))"
    )
    if url.startswith("sqlite"):
        with sqlite3.connect(url[len("sqlite://") :]) as conn:
            conn.execute(ddl)
    else:
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(ddl)


def _measure(target, url: str, synchronous: str, writers: int, total: int) -> float:
    """Aggregate appends/second of ``writers`` processes, ``total`` appends in all."""
    with open_store(settings=_settings(url, synchronous)) as store:
        runs = [store.create_run("bench:log_append").id for _ in range(writers)]
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(writers + 1)
    procs = [
        ctx.Process(target=target, args=(url, synchronous, run, total // writers, start))
        for run in runs
    ]
    for p in procs:
        p.start()
    start.wait()  # every process has opened its connection
    t0 = time.perf_counter()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"a benchmark process failed (exit {p.exitcode})")
    return total / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=2000, help="appends per measurement")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="torpor-bench-"))
    pg = TemporaryPostgres(fsync=True).start()
    try:
        pg_url = pg.create_database("bench")
        _prepare_bare(pg_url)
        backends = []
        for sync in ("FULL", "NORMAL"):
            url = f"sqlite://{tmp / f'sqlite-{sync}.db'}"
            open_store(settings=_settings(url, sync)).close()
            _prepare_bare(url)
            backends.append((f"SQLite, WAL, synchronous={sync}", url, sync))
        backends.append(("PostgreSQL 15, fsync=on, synchronous_commit=on", pg_url, "FULL"))

        rows = []
        for label, url, sync in backends:
            for writers in (1, WRITERS):
                results: dict[str, list[float]] = {"torpor": [], "bare": []}
                for r in range(args.repeat):
                    for name, target in (("torpor", _torpor_appends), ("bare", _bare_appends)):
                        rate = _measure(target, url, sync, writers, args.appends)
                        results[name].append(rate)
                        progress(
                            f"{label}, {writers} writer(s), {name}, rep {r + 1}: {rate:,.0f}/s"
                        )
                t_med, t_min, t_max = median_spread(results["torpor"])
                b_med, _, _ = median_spread(results["bare"])
                rows.append((label, writers, t_med, t_min, t_max, b_med, t_med / b_med))
    finally:
        pg.stop()

    shape = {1: "1 process → 1 run", WRITERS: f"{WRITERS} processes → {WRITERS} runs"}
    lines = [
        "## Context log appends (`bench/log_append.py`)",
        "",
        f"Machine: {machine()}. {args.appends:,} appends of a {len(json.dumps(PAYLOAD))}-byte "
        f"JSON payload per measurement, {args.repeat} repetitions, torpor and the bare INSERT "
        "alternating. *Bare INSERT*: one row per transaction into an equivalent table with the "
        "same durability setting, the floor under any log on that database.",
        "",
        "| store and durability | writers | torpor appends/s (median) | spread "
        "| bare INSERT/s | torpor / bare |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, writers, t_med, t_min, t_max, b_med, ratio in rows:
        lines.append(
            f"| {label} | {shape[writers]} | {t_med:,.0f} | {t_min:,.0f} to {t_max:,.0f} "
            f"| {b_med:,.0f} | {ratio:.2f} |"
        )
    lines += [
        "",
        "`synchronous=FULL` (torpor's default) survives power loss; `NORMAL` in WAL mode "
        "survives process crashes but may lose the last commits on power loss. SQLite has one "
        "writer at a time, so 8 writers share its rate; PostgreSQL appends to different runs "
        "lock different rows and proceed in parallel.",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        keys = (
            "store",
            "writers",
            "torpor_per_s",
            "torpor_min",
            "torpor_max",
            "bare_per_s",
            "ratio",
        )
        save_results(
            "log_append",
            {
                "args": vars(args),
                "payload_bytes": len(json.dumps(PAYLOAD)),
                "rows": [dict(zip(keys, row, strict=True)) for row in rows],
            },
        )
        write_section("log_append", table)
        progress("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
