"""The replay road against DBOS Transact and Temporal, on the same machine in one run.

Figures: per-step overhead of one workflow of --steps trivial steps (against an empty
workflow), and workflows per second of --workflows two-step workflows run one after the
other. torpor and DBOS run on the same SQLite setting (WAL, synchronous=FULL: an fsync per
commit) and on one throwaway PostgreSQL 15 server (fsync on); Temporal's dev server stores in
SQLite only. Repetitions alternate between the systems; each system runs in its own process
(peers in .bench-venv, made by bench/peers/setup.sh), and the medians are compared.

usage: .venv/bin/python bench/replay_steps.py [--steps N] [--workflows M] [--repeat R]
       [--temporal-steps N] [--temporal-workflows M] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, progress, save_results, write_section
from torpor.testing import TemporaryPostgres

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"


@dataclass
class Series:
    """One system on one backend: the JSON rows of each repetition."""

    peer: str
    variant: str
    backend: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        names = {
            ("torpor", "replay"): "torpor (replay road)",
            ("dbos", "step"): "DBOS Transact (`@DBOS.step`)",
            ("temporal", "activity"): "Temporal (activities)",
            ("temporal", "local_activity"): "Temporal (local activities)",
        }
        return names.get((self.peer, self.variant), f"{self.peer} ({self.variant})")

    def values(self, name: str) -> list[float]:
        return [v for row in self.rows for v in row.get(name, [])]

    def median(self, name: str) -> float | None:
        values = self.values(name)
        return statistics.median(values) if values else None


def _run_peer(python: Path, script: str, args: list[str]) -> dict[str, Any]:
    cmd = [str(python), str(PEERS / script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=PEERS, timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"error": f"exit {proc.returncode}, no result: {tail}"}
    row: dict[str, Any] = json.loads(lines[-1])
    return row


def _bench_venv() -> Path | str:
    proc = subprocess.run(
        ["bash", str(PEERS / "setup.sh")], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        return f"bench/peers/setup.sh failed: {proc.stderr.strip()[-300:]}"
    return Path(proc.stdout.strip().splitlines()[-1]) / "bin" / "python"


def _fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--workflows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--temporal-steps",
        type=int,
        default=200,
        help="Temporal's activities take ~50 ms each: fewer keeps the run bounded",
    )
    parser.add_argument("--temporal-workflows", type=int, default=100)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    peer_python = _bench_venv()
    series = [
        Series("torpor", "replay", "sqlite"),
        Series("dbos", "step", "sqlite"),
        Series("temporal", "local_activity", "sqlite"),
        Series("temporal", "activity", "sqlite"),
        Series("torpor", "replay", "postgres"),
        Series("dbos", "step", "postgres"),
    ]
    pg = TemporaryPostgres(fsync=True).start()
    try:
        for rep in range(args.repeat):
            # Alternate the order so no system always runs on a warmer or cooler machine.
            order = series if rep % 2 == 0 else list(reversed(series))
            for s in order:
                steps, workflows = args.steps, args.workflows
                if s.peer == "temporal":
                    steps, workflows = args.temporal_steps, args.temporal_workflows
                cli = ["--backend", s.backend, "--steps", str(steps),
                       "--workflows", str(workflows), "--repeat", "1"]  # fmt: skip
                if s.backend == "postgres":
                    cli += ["--url", pg.create_database(f"{s.peer}_{rep}")]
                if s.peer == "temporal":
                    cli += ["--activity", "local" if s.variant == "local_activity" else "regular"]
                if s.peer == "torpor":
                    row = _run_peer(Path(sys.executable), "torpor_peer.py", cli)
                elif isinstance(peer_python, str):
                    row = {"error": peer_python}
                else:
                    row = _run_peer(peer_python, f"{s.peer}_peer.py", cli)
                if row.get("error"):
                    s.errors.append(str(row["error"]))
                    progress(f"rep {rep + 1}: {s.label} on {s.backend}: ERROR {row['error']}")
                else:
                    s.rows.append(row)
                    med = row.get("median", {})
                    progress(
                        f"rep {rep + 1}: {s.label} on {s.backend}: "
                        f"{med.get('per_step_us', 0):,.0f} us/step, "
                        f"{med.get('workflows_per_second', 0):,.0f} workflows/s"
                    )
    finally:
        pg.stop()

    table = _report(series, args)
    print(table)
    if not args.no_write:
        save_results(
            "replay_steps",
            {
                "args": vars(args),
                "series": [
                    {
                        "peer": s.peer,
                        "variant": s.variant,
                        "label": s.label,
                        "backend": s.backend,
                        "per_step_us": s.median("per_step_us"),
                        "workflows_per_second": s.median("workflows_per_second"),
                        "rows": s.rows,
                        "errors": s.errors,
                    }
                    for s in series
                ],
            },
        )
        write_section("replay_steps", table)
        progress("wrote docs/benchmarks.md")


def _report(series: list[Series], args: argparse.Namespace) -> str:
    lines = [
        "## Replay road: per-step overhead and workflows/s (`bench/replay_steps.py`)",
        "",
        f"Machine: {machine()}. Each system in its own process, repetitions alternating, "
        f"{args.repeat} repetitions; medians (min–max over repetitions in brackets). "
        f"Per-step overhead = (time of one workflow of {args.steps:,} trivial steps − time of an "
        f"empty workflow) / {args.steps:,}; workflows/s = {args.workflows:,} two-step "
        "workflows started and awaited one after the other. Temporal ran "
        f"{args.temporal_steps} steps and {args.temporal_workflows} workflows per repetition "
        "(its activities take ~50 ms each).",
        "",
        "| system | store | durability in effect | per-step overhead µs | workflows/s "
        "| torpor's per-step ÷ this | this's workflows/s ÷ torpor's |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    torpor = {s.backend: s for s in series if s.peer == "torpor"}
    for s in series:
        store = "SQLite" if s.backend == "sqlite" else "PostgreSQL 15"
        if not s.rows:
            why = "; ".join(sorted(set(s.errors))) or "no result"
            lines.append(f"| {s.label} | {store} | — | did not run: {why} | | | |")
            continue
        durability = s.rows[-1].get("durability", "")
        versions = ", ".join(f"{k} {v}" for k, v in s.rows[-1].get("version", {}).items())
        step = s.median("per_step_us")
        wps = s.median("workflows_per_second")
        spread = s.values("per_step_us")
        mine = torpor.get(s.backend)
        ratio = ratio_wf = "—"
        if mine is not None and mine is not s and mine.rows and step and wps:
            ratio = f"{(mine.median('per_step_us') or 0) / step:.2f}"
            ratio_wf = f"{wps / (mine.median('workflows_per_second') or 1):.2f}"
        lines.append(
            f"| {s.label} ({versions}) | {store} | {durability} | {_fmt(step)} "
            f"({_fmt(min(spread))}–{_fmt(max(spread))}) | {_fmt(wps)} | {ratio} | {ratio_wf} |"
        )
    lines += [
        "",
        "Reading it: *torpor's per-step ÷ this* below 0.5 meets the goal of at most half the "
        "peer's per-step overhead. Every step of every system here is durable: one commit "
        "(an fsync) per recorded step is the floor on this disk, which `bench/log_append.py` "
        "measures as the bare INSERT rate.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
