"""Recovery after SIGKILL against history length: torpor's replay road, DBOS Transact, Temporal.

The same workflow everywhere: --total trivial steps, each returning its argument plus one
(bench/peers/recovery_peer.py). A process runs it until N steps are recorded and the next one
has begun, and is SIGKILLed (its whole process group). After the lease time (torpor's lease,
Temporal's workflow task timeout, both --lease; DBOS needs no wait) a new process does what a
restarted service does: torpor starts a `Worker`, DBOS calls `DBOS.launch()`, Temporal starts
an SDK worker, and each finds the workflow and replays its recorded N steps from the store.
Measured, per trial, in the new process:

- *launch → first new step*: from the call that starts the recovering machinery (torpor's
  `Worker.run`, `DBOS.launch()`, the Temporal worker) to the first step body executed in
  the new process, which is the step after the N recorded ones: the cost of reloading and
  replaying the history;
- *spawn → first new step*: the same from the moment the driver spawned the process, which
  adds the interpreter start and the imports.

torpor and DBOS run on the same SQLite setting (WAL, synchronous=FULL) and on one throwaway
PostgreSQL 15 server; Temporal's dev server stores in SQLite only (each trial a fresh server).
Systems alternate within each repetition.

usage: .venv/bin/python bench/recovery_steps.py [--steps 10,100,1000] [--repeat 3]
       [--systems torpor,dbos,temporal] [--backends sqlite,postgres] [--lease 1] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOCS, format_ms, machine, progress, save_results, write_section

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "bench" / "peers" / "recovery_peer.py"
PLOT = DOCS.parent / "recovery_steps.png"
EXTRA = 3  # steps after the crash point
NAMES = {
    "torpor": "torpor (replay road)",
    "dbos": "DBOS Transact",
    "temporal": "Temporal (local activities)",
}


def _spawn(python: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [python, str(PEER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        cwd=PEER.parent,
        start_new_session=True,
    )


def _kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line, or an error with the stderr tail if it does not come."""
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if sel.select(timeout=0.5):
            line = proc.stdout.readline()
            if line:
                return line.strip()
        if proc.poll() is not None:
            break
    _kill(proc)
    err = proc.stderr.read() if proc.stderr else ""
    tail = " | ".join(err.strip().splitlines()[-3:])
    raise RuntimeError(f"exit {proc.returncode}, no output after {timeout:.0f} s: {tail}")


def trial(
    system: str, backend: str, n: int, python: str, url: str | None, lease: float
) -> dict[str, Any]:
    """One run crashed after n recorded steps and recovered by a new process."""
    out: dict[str, Any] = {"system": system, "backend": backend, "steps": n}
    with tempfile.TemporaryDirectory(prefix=f"bench-recovery-{system}-") as workdir:
        common = [
            "--system",
            system,
            "--total",
            str(n + EXTRA),
            "--dir",
            workdir,
            "--lease",
            str(lease),
        ]
        server = None
        try:
            if system == "temporal":
                server = _spawn(
                    python, ["--system", system, "--phase", "server", "--dir", workdir], {}
                )
                url = json.loads(_read_line(server, 120))["address"]
            if url:
                common += ["--url", url]
            env = {
                "BENCH_CRASH_AT": str(n),
                "TORPOR_LEASE_SECONDS": str(lease),
                "TORPOR_HOME": workdir,
            }
            run = _spawn(python, [*common, "--phase", "run"], env)
            started = time.monotonic()
            try:
                line = _read_line(run, 600 + n)
                if line != f"at {n}":
                    raise RuntimeError(f"the run phase said {line!r}")
                out["run_s"] = time.monotonic() - started
            finally:
                _kill(run)
            time.sleep(lease if system != "dbos" else 0)
            spawned = time.time()
            rec = _spawn(python, [*common, "--phase", "recover"], {"TORPOR_HOME": workdir})
            try:
                stdout, stderr = rec.communicate(timeout=600)
            except subprocess.TimeoutExpired:
                _kill(rec)
                raise RuntimeError("the recovering process did not finish in 600 s") from None
            lines = [x for x in stdout.splitlines() if x.startswith("{")]
            if not lines:
                tail = " | ".join(stderr.strip().splitlines()[-3:])
                raise RuntimeError(f"recover phase exit {rec.returncode}, no result: {tail}")
            row = json.loads(lines[-1])
            if row.get("error"):
                raise RuntimeError(row["error"])
            marks = row["marks"]
            if "first_new_step" not in marks or "done" not in marks:
                raise RuntimeError(f"the recovered workflow did not run to its end: {marks}")
            out["version"] = row.get("version", {})
            out["launch_to_step_s"] = marks["first_new_step"] - marks["launch"]
            out["spawn_to_step_s"] = marks["first_new_step"] - spawned
            out["imports_s"] = marks["imported"] - marks["process"]
            out["rest_s"] = marks["done"] - marks["first_new_step"]
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if server is not None:
                server.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.wait(timeout=20)
                _kill(server)  # and whatever is left of its process group
    return out


def summarize(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted(
        {(t["backend"], t["steps"], t["system"]) for t in trials},
        key=lambda k: (k[0] != "sqlite", k[1], list(NAMES).index(k[2])),
    )
    for backend, n, system in keys:
        ts = [t for t in trials if (t["backend"], t["steps"], t["system"]) == (backend, n, system)]
        ok = [t for t in ts if not t.get("error")]
        rows.append(
            {
                "backend": backend,
                "steps": n,
                "system": system,
                "trials": len(ts),
                "ok": len(ok),
                "launch_to_step_s": [t["launch_to_step_s"] for t in ok],
                "spawn_to_step_s": [t["spawn_to_step_s"] for t in ok],
                "imports_s": [t["imports_s"] for t in ok],
                "errors": sorted({t["error"] for t in ts if t.get("error")}),
                "version": next((t["version"] for t in ok), {}),
            }
        )
    return rows


def plot(rows: list[dict[str, Any]]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    colors = {"torpor": "tab:blue", "dbos": "tab:green", "temporal": "tab:purple"}
    for (system, backend), marker in (
        (("torpor", "sqlite"), "o-"),
        (("torpor", "postgres"), "o--"),
        (("dbos", "sqlite"), "s-"),
        (("dbos", "postgres"), "s--"),
        (("temporal", "sqlite"), "^-"),
    ):
        pts = [
            r
            for r in rows
            if r["system"] == system and r["backend"] == backend and r["launch_to_step_s"]
        ]
        if not pts:
            continue
        xs = [r["steps"] for r in pts]
        meds = [statistics.median(r["launch_to_step_s"]) * 1e3 for r in pts]
        lo = [m - min(r["launch_to_step_s"]) * 1e3 for m, r in zip(meds, pts, strict=True)]
        hi = [max(r["launch_to_step_s"]) * 1e3 - m for m, r in zip(meds, pts, strict=True)]
        store = "SQLite" if backend == "sqlite" else "PostgreSQL"
        ax.errorbar(
            xs,
            meds,
            yerr=[lo, hi],
            fmt=marker,
            color=colors[system],
            capsize=3,
            label=f"{NAMES[system]}, {store}",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("steps recorded at the SIGKILL")
    ax.set_ylabel("launch → first new step (ms)")
    ax.set_title("Recovery of a workflow of trivial steps after SIGKILL")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)
    return True


def _slope(rows: list[dict[str, Any]], r: dict[str, Any]) -> str:
    """µs per recorded step beyond the fewest measured: what replaying one more step costs."""
    base = min(
        (
            b
            for b in rows
            if (b["system"], b["backend"]) == (r["system"], r["backend"])
            and b["launch_to_step_s"]
            and b["steps"] < r["steps"]
        ),
        key=lambda b: b["steps"],
        default=None,
    )
    if base is None or not r["launch_to_step_s"]:
        return "—"
    grown = statistics.median(r["launch_to_step_s"]) - statistics.median(base["launch_to_step_s"])
    if grown <= 0:
        return "≤ 0 (noise)"
    return f"{grown / (r['steps'] - base['steps']) * 1e6:,.0f}"


def report(rows: list[dict[str, Any]], args: Any, plotted: bool) -> str:
    versions = "; ".join(
        sorted(
            {", ".join(f"{k} {v}" for k, v in r["version"].items()) for r in rows if r["version"]}
        )
    )
    lines = [
        "## Recovery after SIGKILL against history length (`bench/recovery_steps.py`)",
        "",
        f"Machine: {machine()}; {versions}. A workflow of trivial steps (each returns its "
        "argument plus one) is SIGKILLed when N steps are recorded and step N+1 has begun; a "
        "new process then recovers it as a restarted service would: torpor starts a "
        "`Worker`, DBOS calls `DBOS.launch()` (which recovers its pending workflows), "
        "Temporal starts an SDK worker (steps as local activities, each trial on a fresh "
        "dev server). *Launch → first new step*: from that call to the first step body "
        "executed in the new process (recorded steps are answered from the history), i.e. "
        "reloading and replaying the history. *Spawn → first new step* adds the interpreter "
        "start and the imports. *Per more recorded step*: the growth of launch → first new "
        "step from the fewest steps measured, divided by the steps added. "
        "The wait for the dead process's claim to lapse is left out: "
        f"the recovering process starts after {args.lease:g} s (torpor's lease, Temporal's "
        "workflow task timeout; DBOS recovers its own executor's workflows at launch, without "
        f"a wait). {args.repeat} repetitions, systems alternating; median (min–max), ms.",
        "",
        "| store | steps recorded | system | launch → first new step | per more recorded step µs "
        "| spawn → first new step | of it imports | trials ok |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        store = "SQLite" if r["backend"] == "sqlite" else "PostgreSQL 15"
        if not r["launch_to_step_s"]:
            lines.append(
                f"| {store} | {r['steps']:,} | {NAMES[r['system']]} | did not run: "
                f"{'; '.join(r['errors'])} | | | | 0/{r['trials']} |"
            )
            continue
        per = _slope(rows, r)
        lines.append(
            f"| {store} | {r['steps']:,} | {NAMES[r['system']]} "
            f"| {format_ms(r['launch_to_step_s'])} "
            f"| {per} | {format_ms(r['spawn_to_step_s'])} | {format_ms(r['imports_s'])} "
            f"| {r['ok']}/{r['trials']} |"
        )
    errors = sorted({e for r in rows if r["launch_to_step_s"] for e in r["errors"]})
    if errors:
        lines += ["", "Failed trials: " + "; ".join(errors)]
    if plotted:
        lines += ["", "![recovery time against steps recorded](recovery_steps.png)"]
    lines += _reading(rows)
    return "\n".join(lines)


def _reading(rows: list[dict[str, Any]]) -> list[str]:
    def med(system: str, backend: str, n: int) -> float | None:
        r = next(
            (
                r
                for r in rows
                if (r["system"], r["backend"], r["steps"]) == (system, backend, n)
                and r["launch_to_step_s"]
            ),
            None,
        )
        return statistics.median(r["launch_to_step_s"]) if r else None

    hi = max((r["steps"] for r in rows), default=0)
    parts = []
    for backend, store in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        mine, dbos = med("torpor", backend, hi), med("dbos", backend, hi)
        if mine and dbos:
            parts.append(
                f"on {store} torpor took {mine * 1e3:,.0f} ms and DBOS "
                f"{dbos * 1e3:,.0f} ms ({dbos / mine:,.1f}×)"
            )
    temporal = med("temporal", "sqlite", hi)
    if temporal:
        parts.append(f"Temporal {temporal * 1e3:,.0f} ms")
    if not parts:
        return []
    text = f"Reading it: to resume after {hi:,} recorded steps, " + "; ".join(parts) + "."
    if med("dbos", "sqlite", hi) or med("dbos", "postgres", hi):
        text += (
            " DBOS (3.x) recovers a pending workflow by re-enqueueing it on its internal queue "
            "(`dbos/_recovery.py`), which a queue thread polls about once a second: most of "
            "DBOS's time here is that poll, whatever the history's length; its replay is the "
            "growth with the steps. torpor's worker claims the run at its first poll (20 ms "
            "here), loads the journal and re-executes the workflow, each recorded step "
            "answered from it."
        )
    return ["", text]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10,100,1000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--systems", default="torpor,dbos,temporal")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from replay_steps import _bench_venv
    from torpor.testing import TemporaryPostgres

    peer_python = _bench_venv()
    points = [int(s) for s in args.steps.split(",")]
    systems = args.systems.split(",")
    backends = args.backends.split(",")
    pg = TemporaryPostgres(fsync=True).start() if "postgres" in backends else None
    trials: list[dict[str, Any]] = []
    try:
        for rep in range(args.repeat):
            for backend in backends:
                for n in points:
                    order = systems if rep % 2 == 0 else list(reversed(systems))
                    for system in order:
                        if system == "temporal" and backend != "sqlite":
                            continue  # the dev server stores in SQLite only
                        python = sys.executable if system == "torpor" else peer_python
                        if isinstance(python, str) and not Path(python).exists():
                            t: dict[str, Any] = {
                                "system": system,
                                "backend": backend,
                                "steps": n,
                                "error": python,
                            }
                        else:
                            url = None
                            if backend == "postgres" and pg is not None:
                                url = pg.create_database(f"{system}_{n}_{rep}")
                            t = trial(system, backend, n, str(python), url, args.lease)
                        trials.append(t)
                        what = (
                            f"ERROR {t['error']}"
                            if t.get("error")
                            else f"launch → first new step {t['launch_to_step_s'] * 1e3:,.0f} ms, "
                            f"spawn → {t['spawn_to_step_s'] * 1e3:,.0f} ms"
                        )
                        progress(f"rep {rep + 1}: {system} on {backend}, {n} steps: {what}")
    finally:
        if pg is not None:
            pg.stop()
    rows = summarize(trials)
    plotted = not args.no_write and plot(rows)
    table = report(rows, args, plotted)
    print(table)
    if not args.no_write:
        save_results("recovery_steps", {"args": vars(args), "rows": rows, "trials": trials})
        write_section("recovery_steps", table)
        progress(f"wrote {DOCS}" + (f" and {PLOT}" if plotted else ""))


if __name__ == "__main__":
    main()
