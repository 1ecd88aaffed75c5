"""Storage and recording time per turn of one agent conversation: torpor's context log
against LangGraph's SQLite checkpointer.

The conversation (bench/peers/_conversation.py) is the same everywhere: per turn a user
message, an assistant reply calling a tool, the tool's result and the assistant's answer,
~4.8 KB of text. Systems, each in its own process, repetitions alternating:

- *torpor, `torpor.Agent`*: one replay-road run (embedded worker, SQLite, WAL,
  synchronous=FULL) in which every turn is `agent.run(user message)`: the real agent loop,
  two model calls through the Anthropic SDK to the scripted model server on loopback and one
  typed tool call, each journaled as the agent journals them;
- *torpor, steps*: the same four items as four `@torpor.step` calls with the model a local
  function, the shape of LangGraph's run below (no HTTP);
- *LangGraph, `add_messages`*: `bench/peers/langgraph_peer.py --variant messages`, the state
  as LangGraph documents it (every checkpoint holds the whole conversation);
- *LangGraph, `DeltaChannel`* (beta): `--variant delta`.

Measured: bytes each turn adds to the database's tables, the database's size on disk after
10, 100, 1,000 turns, and per turn the wall time and the time spent writing (torpor: in the
store's appends; LangGraph: in the saver's `put`/`put_writes`).

usage: .venv/bin/python bench/agent_storage.py [--turns 10,100,1000] [--repeat 3]
       [--long-repeat 1] [--no-write] [--report-only]
--long-repeat: how many of the repetitions go past 100 turns (LangGraph's 1,000-turn thread
writes ~14 GB).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
import _conversation as conv  # type: ignore[import-not-found]

import torpor
from _common import DOCS, RESULTS, format_ms, machine, progress, save_results, write_section

ROOT = Path(__file__).resolve().parent.parent
PLOT = DOCS.parent / "agent_storage.png"
SYSTEMS = {
    "torpor-agent": "torpor, `torpor.Agent` (scripted model over HTTP)",
    "torpor-steps": "torpor, `@torpor.step` (model a local function)",
    "langgraph-messages": "LangGraph + SqliteSaver, `add_messages`",
    "langgraph-delta": "LangGraph + SqliteSaver, `DeltaChannel` (beta)",
}


# -- the torpor side, run as a child process: --child VARIANT --------------------------------


def search_code(query: str, limit: int, turn: int) -> str:
    """Search the code base.

    Args:
        query: what to look for.
        limit: the most results to return.
        turn: the conversation's turn.
    """
    return str(conv.tool_result(turn))


@torpor.step(name="user")
def _user(turn: int) -> dict[str, Any]:
    return {"type": "user", "text": conv.user_message(turn)}


@torpor.step(name="model")
def _model(turn: int, answering: bool) -> dict[str, Any]:
    if answering:
        items = [{"type": "text", "text": conv.answer(turn)}]
        return {"items": items, "stop_reason": "end_turn"}
    text, arguments, call_id = conv.assistant_call(turn)
    items = [
        {"type": "text", "text": text},
        {"type": "tool_call", "id": call_id, "name": conv.TOOL, "arguments": arguments},
    ]
    return {"items": items, "stop_reason": "tool_use"}


@torpor.step(name=conv.TOOL)
def _tool(turn: int) -> dict[str, Any]:
    return {
        "type": "tool_result",
        "id": f"call-{turn}",
        "content": search_code("", 20, turn),
        "is_error": False,
    }


class _Probe:
    """Per-turn time and bytes, taken inside the run (not journaled: nothing replays here)."""

    def __init__(self, db: Path, points: list[int]) -> None:
        self.db, self.points = db, points
        self.conn = sqlite3.connect(db, isolation_level=None, timeout=60, check_same_thread=False)
        self.turns: list[dict[str, float]] = []
        self.out_points: list[dict[str, Any]] = []
        self.append_s = 0.0
        self.started = time.perf_counter()
        self.rowid = 0

    def wrap(self, store: Any) -> None:
        for name in ("append", "append_owned"):
            inner = getattr(store, name)

            def timed(*args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return _inner(*args, **kwargs)
                finally:
                    self.append_s += time.perf_counter() - started

            setattr(store, name, timed)

    def turn_done(self, turn: int) -> None:
        wall = time.perf_counter() - self.started
        size, last = self.conn.execute(
            "SELECT coalesce(sum(length(CAST(payload AS BLOB))), 0), max(rowid) FROM torpor_log "
            "WHERE rowid > ?",
            (self.rowid,),
        ).fetchone()
        self.rowid = last or self.rowid
        self.turns.append({"turn": turn, "wall_s": wall, "saver_s": self.append_s, "bytes": size})
        if turn in self.points:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            files = [self.db, Path(f"{self.db}-wal")]
            self.out_points.append(
                {
                    "turns": turn,
                    "db_bytes": sum(p.stat().st_size for p in files if p.exists()),
                    "entries": self.conn.execute("SELECT count(*) FROM torpor_log").fetchone()[0],
                    "payload_bytes": sum(t["bytes"] for t in self.turns),
                    "text_bytes": sum(conv.turn_bytes(t) for t in range(1, turn + 1)),
                }
            )
        self.append_s = 0.0
        self.started = time.perf_counter()


_probe: _Probe | None = None


@torpor.workflow(name="bench.agent_storage.conversation")
def conversation(turns: int, base_url: str) -> int:
    agent = None
    if base_url:
        agent = torpor.Agent(
            "anthropic:scripted",
            tools=[search_code],
            max_turns=4,
            base_url=base_url,
            model_retries=0,
        )
    for turn in range(1, turns + 1):
        if agent is not None:
            agent.run(conv.user_message(turn))
        else:
            _user(turn)
            _model(turn, False)
            _tool(turn)
            _model(turn, True)
        if _probe is not None:
            _probe.turn_done(turn)
    return turns


def _script(request: Any) -> Any:
    from torpor.testing import reply_text, reply_tool_calls

    user = next(i for i in request.items if type(i).__name__ == "UserText")
    turn = int(user.text.split(".")[0].split()[1])
    if request.tool_results:
        return reply_text(conv.answer(turn))
    text, arguments, call_id = conv.assistant_call(turn)
    return reply_tool_calls([(conv.TOOL, arguments)], text=text, ids=[call_id])


def _child(variant: str, points: list[int], workdir: Path) -> dict[str, Any]:
    import os

    from torpor import Settings
    from torpor.store import open_store
    from torpor.testing import ScriptedModelServer

    global _probe
    os.environ.setdefault("ANTHROPIC_API_KEY", "bench-key-for-the-scripted-server")
    db = workdir / "torpor.db"
    base = Settings.from_env()
    store = open_store(settings=Settings(workdir, f"sqlite://{db}", base.blob_url))
    with store._read() as tx:  # type: ignore[attr-defined]
        sync = tx.execute("PRAGMA synchronous").fetchone()[0]
        journal = tx.execute("PRAGMA journal_mode").fetchone()[0]
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    torpor.configure(store=store)
    _probe = _Probe(db, points)
    _probe.wrap(store)
    out: dict[str, Any] = {
        "peer": "torpor",
        "variant": variant,
        "version": {"torpor": torpor.__version__},
        "durability": f"sqlite journal_mode={journal} synchronous={names.get(sync, sync)}",
    }
    with ScriptedModelServer(_script) as server:
        url = server.anthropic_base_url if variant == "agent" else ""
        _probe.started = time.perf_counter()
        result = torpor.start(conversation, max(points), url).result(timeout=7200)
        assert result == max(points), result
        out["model_requests"] = server.call_count
    out["turns"], out["points"] = _probe.turns, _probe.out_points
    out["kinds"] = dict(
        _probe.conn.execute("SELECT kind, count(*) FROM torpor_log GROUP BY kind").fetchall()
    )
    store.close()
    return out


# -- the driver --------------------------------------------------------------------------------


def _run(system: str, points: list[int], peer_python: Path | str) -> dict[str, Any]:
    turns = ",".join(str(p) for p in points)
    if system.startswith("torpor"):
        cmd = [sys.executable, __file__, "--child", system.split("-")[1], "--turns", turns]
    elif isinstance(peer_python, str):
        return {"error": peer_python}
    else:
        variant = system.split("-")[1]
        cmd = [
            str(peer_python),
            str(ROOT / "bench" / "peers" / "langgraph_peer.py"),
            "--variant",
            variant,
            "--turns",
            turns,
        ]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"error": f"exit {proc.returncode}, no result: {tail}"}
    row: dict[str, Any] = json.loads(lines[-1])
    row["seconds"] = time.monotonic() - started
    return row


def _window(rows: list[dict[str, Any]], n: int, key: str) -> list[float]:
    """Per repetition, the median of ``key`` over the (up to) ten turns ending at turn n."""
    out = []
    for row in rows:
        vals = [t[key] for t in row.get("turns", []) if n - 10 < t["turn"] <= n]
        if vals:
            out.append(statistics.median(vals))
    return out


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,.0f} B"


def summarize(results: dict[str, list[dict[str, Any]]], points: list[int]) -> list[dict[str, Any]]:
    """One row per system and point: sizes, per-turn bytes and times (medians)."""
    rows = []
    for system, runs in results.items():
        good = [r for r in runs if not r.get("error")]
        for n in points:
            at = [p for r in good for p in r.get("points", []) if p["turns"] == n]
            reached = [r for r in good if any(p["turns"] == n for p in r.get("points", []))]
            if not at:
                continue
            last = _window(reached, n, "bytes")
            rows.append(
                {
                    "system": system,
                    "turns": n,
                    "runs": len(at),
                    "db_bytes": statistics.median(p["db_bytes"] for p in at),
                    "payload_bytes": statistics.median(p["payload_bytes"] for p in at),
                    "text_bytes": at[0]["text_bytes"],
                    "turn_bytes": statistics.median(last) if last else None,
                    "wall_s": _window(reached, n, "wall_s"),
                    "write_s": _window(reached, n, "saver_s"),
                }
            )
    return rows


def plot(results: dict[str, list[dict[str, Any]]], points: list[int]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    styles = {
        "torpor-agent": ("tab:blue", "-"),
        "torpor-steps": ("tab:cyan", "--"),
        "langgraph-messages": ("tab:red", "-"),
        "langgraph-delta": ("tab:orange", "--"),
    }
    for system, runs in results.items():
        good = [r for r in runs if not r.get("error") and r.get("turns")]
        if not good:
            continue
        longest = max(good, key=lambda r: len(r["turns"]))
        color, dash = styles.get(system, ("gray", ":"))
        label = SYSTEMS.get(system, system).replace("`", "")
        xs = [t["turn"] for t in longest["turns"]]
        axes[0].plot(
            xs, [t["bytes"] / 1e3 for t in longest["turns"]], dash, color=color, label=label
        )
        writing = [t["saver_s"] * 1e3 for t in longest["turns"]]
        axes[1].plot(
            xs,
            [statistics.median(writing[max(0, i - 4) : i + 5]) for i in range(len(writing))],
            dash,
            color=color,
            label=label,
            alpha=0.8,
        )
        pts = sorted({p["turns"] for r in good for p in r["points"]})
        sizes = [
            statistics.median(
                p["db_bytes"] / 1e6 for r in good for p in r["points"] if p["turns"] == n
            )
            for n in pts
        ]
        axes[2].plot(pts, sizes, "o" + dash, color=color, label=label)
    text = [conv.turn_bytes(n) for n in range(1, max(points) + 1)]
    axes[0].plot(
        range(1, len(text) + 1), [b / 1e3 for b in text], ":", color="gray", label="the turn's text"
    )
    axes[2].plot(
        points,
        [sum(text[:n]) / 1e6 for n in points],
        ":",
        color="gray",
        label="the conversation's text",
    )
    titles = [
        ("bytes written per turn", "kB"),
        ("time writing per turn (running median of 9)", "ms"),
        ("database on disk after N turns", "MB"),
    ]
    for ax, (title, unit) in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("turn" if ax is not axes[2] else "turns")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)
    return True


def report(
    results: dict[str, list[dict[str, Any]]], points: list[int], args: Any, plotted: bool
) -> str:
    rows = summarize(results, points)
    seen: dict[str, None] = {}
    for runs in results.values():
        for r in runs[:1]:
            if r.get("version"):
                named = ", ".join(f"{k} {v}" for k, v in r["version"].items())
                seen[f"{named} ({r.get('durability', '')})"] = None
    versions = "; ".join(seen)
    lines = [
        "## Agent conversation storage: context log against LangGraph's checkpoints "
        "(`bench/agent_storage.py`)",
        "",
        f"Machine: {machine()}. {versions}. One conversation, the same text for every "
        "system: per turn a user message, an assistant reply calling a tool, the tool's result "
        f"and the answer ({conv.turn_bytes(1):,} bytes of text in turn 1). Each system in its "
        f"own process, repetitions alternating: {args.repeat} repetitions, "
        f"{args.long_repeat} of them past 100 turns. *Bytes per turn*: what the turn added to "
        "the tables (torpor: `payload` of its log entries; LangGraph: checkpoint blobs, "
        "metadata and pending writes). *On disk*: the database file after a WAL checkpoint. "
        "*Time writing*: torpor's store appends (each a committed, fsynced transaction); "
        "LangGraph's saver `put` + `put_writes` (summed; some overlap in the graph's threads). "
        "*Bytes per turn* and times: the median over the 10 turns ending at N (times: "
        "min–max over repetitions).",
        "",
        "| system | turns | on disk | of it text | bytes per turn | ÷ the turn's text "
        "| turn wall time ms | of it writing ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per = r["turn_bytes"]
        text_n = conv.turn_bytes(r["turns"])
        lines.append(
            f"| {SYSTEMS.get(r['system'], r['system'])} | {r['turns']:,} | {_size(r['db_bytes'])} "
            f"| {_size(r['text_bytes'])} | {_size(per) if per is not None else '—'} "
            f"| {per / text_n if per else 0:,.1f}× | {format_ms(r['wall_s'], 1)} "
            f"| {format_ms(r['write_s'], 1)} |"
        )
    failed = {s: runs for s, runs in results.items() if any(r.get("error") for r in runs)}
    for system, runs in failed.items():
        errors = sorted({str(r["error"]) for r in runs if r.get("error")})
        lines.append(
            f"| {SYSTEMS.get(system, system)} | — | did not run: {'; '.join(errors)} | | | | | |"
        )
    if plotted:
        lines += ["", "![bytes and time per turn, database size against turns](agent_storage.png)"]
    lines += _reading(rows, points)
    return "\n".join(lines)


def _reading(rows: list[dict[str, Any]], points: list[int]) -> list[str]:
    def row(system: str, n: int) -> dict[str, Any] | None:
        return next((r for r in rows if r["system"] == system and r["turns"] == n), None)

    def wall(r: dict[str, Any] | None) -> str:
        return format_ms(r["wall_s"], 1).split(" (")[0] if r and r["wall_s"] else "—"

    hi, lo = max(points), min(points)
    torpor_hi, lg_hi = row("torpor-agent", hi), row("langgraph-messages", hi)
    if torpor_hi is None or lg_hi is None:
        return []
    torpor_lo, lg_lo = row("torpor-agent", lo), row("langgraph-messages", lo)
    text = (
        f"Reading it: after {hi:,} turns torpor's database holds {_size(torpor_hi['db_bytes'])} "
        f"for {_size(torpor_hi['text_bytes'])} of conversation text, LangGraph's "
        f"(`add_messages`) {_size(lg_hi['db_bytes'])}, "
        f"{lg_hi['db_bytes'] / torpor_hi['db_bytes']:,.0f}× as much."
    )
    if lg_lo and lg_lo["turn_bytes"] and lg_hi["turn_bytes"]:
        text += (
            f" A LangGraph turn near {hi:,} wrote {lg_hi['turn_bytes'] / lg_lo['turn_bytes']:,.0f}"
            f"× the bytes of one near {lo:,} and took {wall(lg_hi)} ms against {wall(lg_lo)} ms: "
            "each of its checkpoints (~5 per turn) carries the whole conversation so far, so "
            "its total grows with the square of the turns."
        )
    if torpor_lo and torpor_lo["turn_bytes"] and torpor_hi["turn_bytes"]:
        text += (
            f" torpor appends each item once: {_size(torpor_lo['turn_bytes'])} per turn near "
            f"turn {lo:,}, {_size(torpor_hi['turn_bytes'])} near {hi:,}; a turn of the real "
            f"agent loop took {wall(torpor_lo)} ms and {wall(torpor_hi)} ms (two model calls "
            "over HTTP included)."
        )
    delta_hi = row("langgraph-delta", hi)
    below = [r for r in (row("langgraph-delta", n) for n in points if n < hi) if r]
    if delta_hi and below:
        prev = below[-1]
        text += (
            " LangGraph's beta `DeltaChannel` stores each turn's writes and, every 100 updates, "
            f"a full snapshot of the conversation: {_size(prev['db_bytes'])} after "
            f"{prev['turns']:,} turns, {_size(delta_hi['db_bytes'])} after {hi:,} "
            f"({delta_hi['db_bytes'] / prev['db_bytes']:,.0f}× for "
            f"{hi / prev['turns']:,.0f}× the turns), its turns taking {wall(prev)} ms and "
            f"{wall(delta_hi)} ms."
        )
    return ["", text]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", default="10,100,1000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--long-repeat", type=int, default=1, help="repetitions that go past 100 turns"
    )
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the section and plot from the JSON"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    points = sorted(int(t) for t in args.turns.split(","))
    if args.report_only:
        saved = json.loads((RESULTS / "agent_storage.json").read_text())
        for key in ("turns", "repeat", "long_repeat"):
            setattr(args, key, saved["args"][key])
        points = sorted(int(t) for t in args.turns.split(","))
        plotted = plot(saved["runs"], points)
        write_section("agent_storage", report(saved["runs"], points, args, plotted))
        progress(f"rebuilt the agent_storage section of {DOCS} from its JSON")
        return
    if args.child:
        with tempfile.TemporaryDirectory(prefix="torpor-bench-storage-") as workdir:
            print(json.dumps(_child(args.child, points, Path(workdir))), flush=True)
        return

    from replay_steps import _bench_venv

    peer_python = _bench_venv()
    systems = args.systems.split(",")
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    for rep in range(args.repeat):
        reach = points if rep < args.long_repeat else [p for p in points if p <= 100] or points
        order = systems if rep % 2 == 0 else list(reversed(systems))
        for system in order:
            row = _run(system, reach, peer_python)
            results[system].append(row)
            if row.get("error"):
                progress(f"rep {rep + 1}: {system}: ERROR {row['error']}")
                continue
            last = row["points"][-1]
            progress(
                f"rep {rep + 1}: {system}: {last['turns']} turns, "
                f"{_size(last['db_bytes'])} on disk, {row['seconds']:.1f} s"
            )
    plotted = not args.no_write and plot(results, points)
    table = report(results, points, args, plotted)
    print(table)
    if not args.no_write:
        errors = {
            s: sorted({str(r["error"]) for r in runs if r.get("error")})
            for s, runs in results.items()
        }
        save_results(
            "agent_storage",
            {
                "args": vars(args),
                "summary": summarize(results, points),
                "runs": results,
                "errors": {s: e for s, e in errors.items() if e},
                "versions": {s: runs[0].get("version") for s, runs in results.items() if runs},
            },
        )
        write_section("agent_storage", table)
        progress(f"wrote {DOCS}" + (f" and {PLOT}" if plotted else ""))


if __name__ == "__main__":
    main()
