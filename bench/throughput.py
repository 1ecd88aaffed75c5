"""Workers on PostgreSQL: runs/s and step latency with 1, 2 and 4 `torpor worker` processes,
the time a SIGKILLed worker's run takes to move on, and the plans of the hot queries.

1. Throughput. --runs R runs of a workflow of --steps S trivial steps are queued on a fresh
   database of one PostgreSQL server (fsync on), then N workers (--concurrency C each) start
   together. runs/s counts the middle 80 % of completions over the time between the 10th
   and the 90th percentile completion (start-up and tail left out). Step latency is the time
   between consecutive step entries of one run: the cost of one step under that load, from
   the previous step's commit to this one's, percentiles over every step of every run.
2. Takeover. Two idle workers with --lease L, one run of slow steps; once its holder has
   recorded 5 steps it is SIGKILLed. Measured: kill → the other worker's `recovered` entry
   (claimed and loaded) and kill → its first new step entry. What to expect: the rest of the
   lease (renewed every L/3, so between 2L/3 and L) plus the idle worker's claim poll
   (which backs off to 2 s) plus the claim and the replay of the journal.
3. Plans. A database of --population runs (most ended, a backlog queued, some running) with
   10 log entries per ended run; EXPLAIN (ANALYZE, BUFFERS) of the claim, lease renewal and
   append statements exactly as PostgresStore sends them (captured from it), and the
   connections each worker holds.

usage: .venv/bin/python bench/throughput.py [--quick] [--workers 1,2,4] [--runs 600]
       [--steps 10] [--concurrency 8] [--repeat 3] [--leases 2,5] [--trials 3]
       [--population 100000] [--no-write]

At the defaults it takes ~3 minutes on 2 cores; --quick about one.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, progress, save_results, write_section
from torpor.store import _postgres as pg_store
from torpor.store import open_store
from torpor.testing import TemporaryPostgres, WorkerGroup, wait_until

FLOWS = Path(__file__).resolve().parent / "_throughput_flows.py"
WORKFLOW = "_throughput_flows"


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@contextmanager
def _workers(url: str) -> Iterator[WorkerGroup]:
    """`torpor worker` processes on one database, in a fresh TORPOR_HOME; stopped on exit
    whatever happens."""
    with tempfile.TemporaryDirectory(prefix="torpor-bench-workers-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TORPOR_")}
        env.update(TORPOR_HOME=home, TORPOR_DATABASE_URL=url)
        with WorkerGroup(env=env, logs=home) as group:
            yield group


def _enqueue(url: str, workflow: str, args: list[Any], count: int) -> list[str]:
    with open_store(url) as store:
        return [
            store.create_run(
                f"{WORKFLOW}.{workflow}",
                input={"args": args, "kwargs": {}},
                source={"file": str(FLOWS)},
            ).id
            for _ in range(count)
        ]


# -- 1. throughput --------------------------------------------------------------------------


def measure_throughput(
    pg: TemporaryPostgres, workers: int, runs: int, steps: int, concurrency: int
) -> dict[str, Any]:
    url = pg.create_database()
    _enqueue(url, "steps", [steps], runs)
    with psycopg.connect(url, autocommit=True) as conn, _workers(url) as group:
        for _ in range(workers):
            group.start("--lease", "30", "--concurrency", str(concurrency))

        def completed() -> int:
            row = conn.execute(
                "SELECT count(*) FROM torpor_runs WHERE status = 'completed'"
            ).fetchone()
            return int(row[0]) if row else 0

        connections = 0
        wait_until(lambda: completed() >= runs // 3, "a third of the runs", timeout=300)
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchone()
        connections = int(row[0]) if row else 0
        wait_until(lambda: completed() >= runs, "every run to complete", timeout=600)
        group.stop_all()
        failed = conn.execute(
            "SELECT count(*) FROM torpor_runs WHERE status <> 'completed'"
        ).fetchone()
        ends = sorted(
            float(r[0])
            for r in conn.execute(
                "SELECT updated_at FROM torpor_runs WHERE status = 'completed'"
            ).fetchall()
        )
        rows = conn.execute(
            "SELECT run_id, created_at FROM torpor_log WHERE kind = 'step' ORDER BY run_id, seq"
        ).fetchall()
    gaps: list[float] = []
    for (run_a, t_a), (run_b, t_b) in itertools.pairwise(rows):
        if run_a == run_b:
            gaps.append((float(t_b) - float(t_a)) * 1000)
    lo, hi = ends[int(0.1 * (len(ends) - 1))], ends[int(0.9 * (len(ends) - 1))]
    middle = sum(1 for t in ends if lo <= t <= hi)
    per_s = middle / (hi - lo) if hi > lo else float("nan")
    return {
        "workers": workers,
        "runs_per_s": per_s,
        "steps_per_s": per_s * steps,
        "p50_ms": _percentile(gaps, 50),
        "p90_ms": _percentile(gaps, 90),
        "p99_ms": _percentile(gaps, 99),
        "connections": connections,
        "not_completed": int(failed[0]) if failed else 0,
    }


# -- 2. takeover ----------------------------------------------------------------------------


def measure_takeover(pg: TemporaryPostgres, lease: float) -> dict[str, float]:
    url = pg.create_database()
    with psycopg.connect(url, autocommit=True) as conn, _workers(url) as group:
        procs = [group.start("--lease", str(lease), "--concurrency", "1") for _ in range(2)]
        time.sleep(3.0)  # both idle: their claim polls have backed off as in production
        (run_id,) = _enqueue(url, "slow", [10_000, 0.05], 1)

        def steps_recorded() -> int:
            row = conn.execute(
                "SELECT count(*) FROM torpor_log WHERE run_id = %s AND kind = 'step'", (run_id,)
            ).fetchone()
            return int(row[0]) if row else 0

        wait_until(lambda: steps_recorded() >= 5, "the run to record 5 steps", timeout=60)
        row = conn.execute("SELECT lease_owner FROM torpor_runs WHERE id = %s", (run_id,))
        owner = str(row.fetchone()[0])  # type: ignore[index]
        holder = next(p for p in procs if f"-{p.pid}-" in owner)
        holder.send_signal(signal.SIGKILL)
        killed_at = time.time()
        holder.wait()

        def progress_after() -> tuple[float, float] | None:
            found = conn.execute(
                "SELECT seq, created_at FROM torpor_log WHERE run_id = %s "
                "AND kind = 'recovered' ORDER BY seq LIMIT 1",
                (run_id,),
            ).fetchone()
            if found is None:
                return None
            step = conn.execute(
                "SELECT created_at FROM torpor_log WHERE run_id = %s AND kind = 'step' "
                "AND seq > %s ORDER BY seq LIMIT 1",
                (run_id, found[0]),
            ).fetchone()
            return None if step is None else (float(found[1]), float(step[0]))

        claimed_at, stepped_at = wait_until(progress_after, "the takeover", timeout=lease + 60)
    return {"lease": lease, "claim_s": claimed_at - killed_at, "step_s": stepped_at - killed_at}


# -- 3. plans -------------------------------------------------------------------------------


def _populate(url: str, population: int) -> None:
    queued = max(100, population // 20)
    running, parked = 200, 200
    ended = population - queued - running - parked
    now = time.time()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO torpor_runs (id, workflow, road, status, input, attempt, queue, "
            "priority, created_at, updated_at, epoch, last_seq, lease_owner, "
            "lease_expires_at, wake_at) "
            "SELECT 'r-pop-' || g, 'bench.steps', 'replay', "
            "CASE WHEN g <= %(e)s THEN 'completed' WHEN g <= %(e)s + %(q)s THEN 'queued' "
            "WHEN g <= %(e)s + %(q)s + %(r)s THEN 'running' ELSE 'waiting' END, "
            "'{\"args\":[10],\"kwargs\":{}}', 1, 'default', 0, %(now)s - (%(n)s - g) * 0.01, "
            "%(now)s, 1, CASE WHEN g <= %(e)s THEN 11 ELSE 0 END, "
            "CASE WHEN g > %(e)s + %(q)s AND g <= %(e)s + %(q)s + %(r)s THEN 'w-busy' END, "
            "CASE WHEN g > %(e)s + %(q)s AND g <= %(e)s + %(q)s + %(r)s "
            "THEN %(now)s + 3600 END, "
            "CASE WHEN g > %(e)s + %(q)s + %(r)s THEN %(now)s + 3600 END "
            "FROM generate_series(1, %(n)s) AS g",
            {"e": ended, "q": queued, "r": running, "n": population, "now": now},
        )
        conn.execute(
            "INSERT INTO torpor_log (run_id, seq, kind, payload, created_at) "
            "SELECT r.id, s, CASE WHEN s = 11 THEN 'completed' ELSE 'step' END, "
            '\'{"pos":\' || s || \',"name":"trivial","result":1}\', r.created_at '
            "FROM torpor_runs r, generate_series(1, 11) AS s WHERE r.status = 'completed'"
        )
        conn.execute("ANALYZE")


def _capture(call: Callable[[], Any]) -> list[tuple[str, list[Any]]]:
    """The statements (with parameters) PostgresStore sends during ``call``."""
    seen: list[tuple[str, list[Any]]] = []
    original = pg_store._PgTx.execute

    def spy(self: Any, sql: str, params: Any = ()) -> Any:
        seen.append((sql, list(params)))
        return original(self, sql, params)

    pg_store._PgTx.execute = spy  # type: ignore[method-assign]
    try:
        call()
    finally:
        pg_store._PgTx.execute = original  # type: ignore[method-assign]
    return seen


def _explain(url: str, sql: str, params: list[Any]) -> str:
    """EXPLAIN ANALYZE inside a transaction that is rolled back (it may be an UPDATE)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + pg_store._to_pyformat(sql), params
        ).fetchall()
        conn.rollback()
    return "\n".join(str(r[0]) for r in rows)


def measure_plans(pg: TemporaryPostgres, population: int) -> dict[str, Any]:
    url = pg.create_database()
    open_store(url).close()  # the schema
    _populate(url, population)
    with open_store(url) as store:
        claim = _capture(lambda: store.claim_run("w-explain", 30.0))
        run = store.get_run(str(claim[-1][1][-1]))  # the UPDATE's last parameter: the id
        renew = _capture(lambda: store.renew_lease(run.id, "w-explain", run.epoch, 30.0))
        append = _capture(
            lambda: store.append_owned(run.id, "step", {"pos": 1, "result": 1}, epoch=run.epoch)
        )
    with psycopg.connect(url, autocommit=True) as conn:
        counts: dict[str, int] = dict(
            conn.execute("SELECT status, count(*) FROM torpor_runs GROUP BY status").fetchall()
        )
        (log_rows,) = conn.execute("SELECT count(*) FROM torpor_log").fetchone()  # type: ignore[misc]
        (max_conn,) = conn.execute("SHOW max_connections").fetchone()  # type: ignore[misc]
    plans = {
        "claim (find)": (claim[0][0], _explain(url, *claim[0])),
        "claim (take)": (claim[1][0], _explain(url, *claim[1])),
        "renew lease": (renew[0][0], _explain(url, *renew[0])),
        "append": (append[0][0], _explain(url, *append[0])),
    }
    return {
        "runs": {str(k): int(v) for k, v in counts.items()},
        "log_rows": int(log_rows),
        "max_connections": int(max_conn),
        "plans": plans,
    }


# -- report ---------------------------------------------------------------------------------


def _plan_lines(plan: str, keep: int = 14) -> str:
    """The plan without buffer and planning lines, long conditions cut; its timing kept."""
    lines = [
        x if len(x) <= 160 else x[:157] + "..."
        for x in plan.splitlines()
        if not x.strip().startswith(("Buffers:", "Planning", "Heap Blocks"))
    ]
    body = [x for x in lines if not x.startswith("Execution Time")]
    timing = [x for x in lines if x.startswith("Execution Time")]
    return "\n".join(body[:keep] + timing)


def _execution_ms(plan: str) -> float:
    for line in plan.splitlines():
        if line.startswith("Execution Time:"):
            return float(line.split()[2])
    return float("nan")


def _report(
    args: argparse.Namespace,
    throughput: list[dict[str, Any]],
    takeovers: list[dict[str, float]],
    plans: dict[str, Any],
    pg_version: str,
) -> str:
    lines = [
        "## Workers on PostgreSQL: throughput, takeover, the hot queries (`bench/throughput.py`)",
        "",
        f"Machine: {machine()} — **2 cores shared by PostgreSQL and every worker**, so more "
        "worker processes compete for the same CPU; the figures show what the store's locking "
        "allows on one small box, not a cluster's capacity. PostgreSQL "
        f"{pg_version} on loopback, fsync on. {args.runs} runs of {args.steps} trivial steps "
        f"each, queued before the workers start; each worker `--concurrency "
        f"{args.concurrency}`; {args.repeat} repetitions per worker count, alternating; "
        "medians (min–max). Load average 1 min: "
        f"{args.load[0]:.1f} before, {args.load[1]:.1f} after (other jobs share the box). "
        "runs/s: the middle 80 % of completions over their time span. "
        "Step latency: time between consecutive step entries of one run (one journaled step "
        "end to end, including its commit), over every step.",
        "",
        "| workers | runs/s | steps/s | step p50 ms | step p90 ms | step p99 ms "
        "| connections held |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in args.workers:
        rows = [r for r in throughput if r["workers"] == n]
        if not rows:
            continue

        def med(key: str, digits: int = 1, rows: list[dict[str, Any]] = rows) -> str:
            values = [float(r[key]) for r in rows]
            return (
                f"{statistics.median(values):,.{digits}f} "
                f"({min(values):,.{digits}f}–{max(values):,.{digits}f})"
            )

        lines.append(
            f"| {n} | {med('runs_per_s')} | {med('steps_per_s', 0)} | {med('p50_ms', 2)} "
            f"| {med('p90_ms', 2)} | {med('p99_ms', 2)} "
            f"| {max(r['connections'] for r in rows)} |"
        )
    lines += [
        "",
        "### Takeover after SIGKILL",
        "",
        "Two idle workers; the one executing a run of 50 ms steps is SIGKILLed after 5 steps. "
        "*kill → claimed*: until the other worker's `recovered` entry; *kill → progress*: "
        "until its first new step. Expected: the rest of the lease (renewed every third of "
        "it: between ⅔ and all of it) + the idle worker's claim poll (backs off to 2 s) + "
        "the claim and the journal's replay.",
        "",
        "| lease | trials | kill → claimed s | kill → progress s |",
        "|---:|---:|---:|---:|",
    ]
    for lease in args.leases:
        rows = [t for t in takeovers if t["lease"] == lease]
        if not rows:
            continue
        claim = [t["claim_s"] for t in rows]
        step = [t["step_s"] for t in rows]
        lines.append(
            f"| {lease:g} s | {len(rows)} | {statistics.median(claim):.2f} "
            f"({min(claim):.2f}–{max(claim):.2f}) | {statistics.median(step):.2f} "
            f"({min(step):.2f}–{max(step):.2f}) |"
        )
    counts = plans["runs"]
    per_worker = max((r["connections"] / r["workers"] for r in throughput), default=0.0)
    lines += [
        "",
        "### Going to 100 workers",
        "",
        f"**Connections.** Each worker opens one `psycopg_pool` pool, at most 8 connections "
        "(`min_size=1`, grown on demand: one per run executing a store call, plus the claim "
        f"loop and the lease heartbeat). Measured here: up to {per_worker:.1f} connections per "
        f"worker at `--concurrency {args.concurrency}`. 100 workers can hold 800, against "
        f"PostgreSQL's default `max_connections` of 100 (this test server: "
        f"{plans['max_connections']}). A worker holds a connection only for one statement or "
        "one short transaction (no session state: the migration lock is "
        "`pg_advisory_xact_lock`, there is no LISTEN, SET or temporary table), so pgbouncer in "
        "**transaction mode** fits: 800 client connections onto a pool of a few dozen server "
        "connections (a common sizing rule: about twice the database server's cores). One "
        "thing must change first: psycopg prepares a statement on the server after 5 executions "
        "(`prepare_threshold=5`), which pgbouncer in transaction mode only supports from 1.21 "
        "with `max_prepared_statements` set; torpor has no setting yet to turn it off "
        "(`prepare_threshold=None` in the pool's connection arguments).",
        "",
        "**The hot queries**, with plans measured on a database of "
        f"{sum(counts.values()):,} runs ({', '.join(f'{v:,} {k}' for k, v in sorted(counts.items()))}) "  # noqa: E501
        f"and {plans['log_rows']:,} log entries (`EXPLAIN (ANALYZE, BUFFERS)` of the statements "
        "exactly as `PostgresStore` sends them):",
        "",
    ]
    notes = {
        "claim (find)": "Claim, part 1 (every idle poll of every worker, and once per run "
        "started): the most urgent runnable run, locked with `FOR UPDATE SKIP LOCKED` so "
        "concurrent claimers skip each other's rows instead of waiting.",
        "claim (take)": "Claim, part 2, same transaction: the new lease and epoch, by primary key.",
        "renew lease": "Lease renewal: every lease/3 for every run a worker holds, one "
        "statement per run.",
        "append": "Append (once per step, model call, tool result): one statement, its own "
        "transaction; the run's row is the per-run lock that makes seqs dense, and the epoch "
        "check is the fencing.",
    }
    for name, (_sql, plan) in plans["plans"].items():
        lines += [f"- {notes[name]}", "", "```", _plan_lines(plan), "```", ""]
    lines += [
        "The claim's cost follows the backlog (the sort reads every runnable row); the "
        "append's does not:",
        "",
        "| runs in the table | queued | claim (find) ms | append ms |",
        "|---:|---:|---:|---:|",
        *(
            f"| {c['population']:,} | {c['queued']:,} | {c['claim_ms']:.2f} "
            f"| {c['append_ms']:.2f} |"
            for c in plans["claims"]
        ),
        "",
    ]
    lines += [
        "**What would need to change for 100 workers**, in the order it would bite:",
        "",
        "1. *Connections*: pgbouncer in transaction mode and a setting to stop server-side "
        "prepared statements (above); or a smaller pool per worker (`pool_size` is fixed at "
        "8 today, not configurable).",
        "2. *The claim's sort*: the claim reads every runnable row through "
        "`torpor_runs_by_status` — a bitmap OR of the three conditions (queued; parked and "
        "due; leased and expired) — and sorts them by `priority, created_at` to take one. "
        "Its cost grows with the backlog of queued runs and the number of running ones "
        "(the expired-lease branch visits every running row). With 100 workers polling "
        "(each at most every 2 s when idle, once per run when busy) on a backlog of "
        "millions this dominates; a partial index `ON torpor_runs (queue, priority DESC, "
        "created_at) WHERE status = 'queued'` would turn the common case into reading one "
        "index entry, with the parked and expired branches on a partial index of "
        "`wake_at` / `lease_expires_at`.",
        "3. *Idle polling*: 100 idle workers make ~50 claim queries/s; cheap once the claim "
        "is an index probe, but a wake-up (LISTEN/NOTIFY, which needs a session connection "
        "outside pgbouncer) would cut both the load and the up-to-2 s pick-up latency.",
        "4. *Heartbeats*: one UPDATE per held run every lease/3 (at the default 30 s lease, "
        "100 workers × 8 runs ≈ 80/s): fine, and one `WHERE id = ANY(...)` statement per "
        "worker would make it 3/s.",
        "5. *The log*: appends touch only their own run's row and its log rows, so they do "
        "not contend across runs; what grows is `torpor_log` itself (one row per step, "
        "forever). At scale it wants partitioning by time or archiving of ended runs.",
        "",
        "Takeover time is the lease plus the poll: shorter leases move work sooner after a "
        "crash but cost more renewals and let a long stop-the-world pause (GC, swap, a "
        "SIGSTOP) cost a run its lease — harmless, since fencing rejects the paused worker's "
        "late writes (see `tests/test_workers.py`), but wasted work.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and repetitions")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--runs", type=int, default=600)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--leases", default="2,5")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--population", type=int, default=100_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.repeat, args.trials, args.population = 150, 1, 1, 20_000
    args.workers = [int(x) for x in str(args.workers).split(",")]
    args.leases = [float(x) for x in str(args.leases).split(",")]

    started = time.monotonic()
    load_before = os.getloadavg()
    throughput: list[dict[str, Any]] = []
    takeovers: list[dict[str, float]] = []
    pg = TemporaryPostgres(fsync=True).start()
    try:
        with psycopg.connect(pg.admin_url) as conn:
            (pg_version,) = conn.execute("SHOW server_version").fetchone()  # type: ignore[misc]
        for rep in range(args.repeat):
            order = args.workers if rep % 2 == 0 else list(reversed(args.workers))
            for n in order:
                row = measure_throughput(pg, n, args.runs, args.steps, args.concurrency)
                throughput.append(row)
                progress(
                    f"rep {rep + 1}: {n} worker(s): {row['runs_per_s']:.1f} runs/s, step p50 "
                    f"{row['p50_ms']:.2f} ms p99 {row['p99_ms']:.2f} ms, "
                    f"{row['connections']} connections"
                )
                if row["not_completed"]:
                    raise SystemExit(f"{row['not_completed']} runs did not complete")
        for lease in args.leases:
            for trial in range(args.trials):
                t = measure_takeover(pg, lease)
                takeovers.append(t)
                progress(
                    f"lease {lease:g} s, trial {trial + 1}: claimed {t['claim_s']:.2f} s, "
                    f"progress {t['step_s']:.2f} s after the kill"
                )
        sizes = [args.population // 10, args.population]
        claims: list[dict[str, Any]] = []
        for size in sizes:
            progress(f"populating {size:,} runs for the plans")
            plans = measure_plans(pg, size)
            claims.append(
                {
                    "population": size,
                    "queued": plans["runs"].get("queued", 0),
                    "claim_ms": _execution_ms(plans["plans"]["claim (find)"][1]),
                    "append_ms": _execution_ms(plans["plans"]["append"][1]),
                }
            )
        plans["claims"] = claims
        load = os.getloadavg()
    finally:
        pg.stop()
    args.load = (load_before[0], load[0])
    table = _report(args, throughput, takeovers, plans, str(pg_version))
    print(table)
    progress(f"done in {time.monotonic() - started:.0f} s")
    if not args.no_write:
        save_results(
            "throughput",
            {
                "args": vars(args),
                "throughput": throughput,
                "takeover": takeovers,
                "plans": {k: {"sql": s, "plan": p} for k, (s, p) in plans["plans"].items()},
                "population": plans["runs"],
                "claims": plans["claims"],
            },
        )
        write_section("throughput", table)
        progress("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
