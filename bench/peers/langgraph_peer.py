"""LangGraph with its SQLite checkpointer: checkpoint bytes and time per turn of a conversation.

Run with .bench-venv's Python (bench/peers/setup.sh makes it). Prints one JSON object on stdout,
progress on stderr. The agent is the usual LangGraph shape: a `StateGraph` whose state is a
list of messages, an `agent` node (the scripted model: a tool call after a user message, an
answer after a tool result) and a `tools` node, looping until the answer. One thread holds the
whole conversation; each turn is one `graph.invoke` of the user's message on that thread
(user message → assistant tool call → tool result → assistant answer, see _conversation.py),
with `durability="sync"` (every checkpoint written before the next step runs).

Measured per turn: the wall time of the invoke, the time spent inside the saver's `put` and
`put_writes` (serialisation and the INSERTs, each committed), the bytes the turn added to the
`checkpoints` and `writes` tables; at each point of --turns, the database's size on disk (after
a WAL checkpoint, so the main file holds everything).

--variant messages: the state as `MessagesState` documents it, `add_messages` on a plain list
channel (every checkpoint carries the whole conversation). --variant delta: the same list in a
`DeltaChannel` (beta in langgraph 1.x: checkpoints carry a sentinel and the writes, with a full
snapshot every --snapshot-frequency updates).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
import traceback
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any, TypedDict

import _conversation as conv
import _peer

_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def _graph(variant: str, snapshot_frequency: int, saver: Any) -> Any:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langgraph.graph import END, START, StateGraph
    from langgraph.graph.message import add_messages

    # Built with the functional syntax: this module's postponed annotations would leave the
    # channel's reducer as a string that LangGraph cannot resolve.
    if variant == "delta":
        from langgraph.channels.delta import DeltaChannel

        def fold(state: list[Any] | None, writes: list[Any]) -> list[Any]:
            flat = [m for w in writes for m in (w if isinstance(w, list) else [w])]
            return add_messages(state or [], flat)  # type: ignore[return-value]

        channel: Any = DeltaChannel(fold, snapshot_frequency=snapshot_frequency)
    else:
        channel = add_messages
    state_type = TypedDict("ConversationState", {"messages": Annotated[list[Any], channel]})  # type: ignore[misc]  # noqa: UP013

    def agent(state: dict[str, Any]) -> dict[str, Any]:
        last = state["messages"][-1]
        turn = int(last.id.split("-")[1])
        if isinstance(last, HumanMessage):
            text, arguments, call_id = conv.assistant_call(turn)
            call = {"name": conv.TOOL, "args": arguments, "id": call_id, "type": "tool_call"}
            return {"messages": [AIMessage(text, id=f"a-{turn}", tool_calls=[call])]}
        return {"messages": [AIMessage(conv.answer(turn), id=f"b-{turn}")]}

    def tools(state: dict[str, Any]) -> dict[str, Any]:
        call = state["messages"][-1].tool_calls[0]
        turn = int(call["id"].split("-")[1])
        result = ToolMessage(conv.tool_result(turn), tool_call_id=call["id"], id=f"t-{turn}")
        return {"messages": [result]}

    def route(state: dict[str, Any]) -> str:
        return "tools" if getattr(state["messages"][-1], "tool_calls", None) else END

    builder = StateGraph(state_type)
    builder.add_node("agent", agent)
    builder.add_node("tools", tools)
    builder.add_edge(START, "agent")
    builder.add_conditional_edges("agent", route, ["tools", END])
    builder.add_edge("tools", "agent")
    return builder.compile(checkpointer=saver), HumanMessage


def _timed_saver(conn: sqlite3.Connection) -> Any:
    from langgraph.checkpoint.sqlite import SqliteSaver

    class TimedSaver(SqliteSaver):
        """SqliteSaver that adds up the time spent in its writes."""

        seconds = 0.0

        def put(self, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return super().put(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        def put_writes(self, *args: Any, **kwargs: Any) -> None:
            started = time.perf_counter()
            try:
                super().put_writes(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

    return TimedSaver(conn)


def _measure(out: dict[str, Any], args: argparse.Namespace, workdir: Path) -> None:
    out["version"] = {
        "langgraph": version("langgraph"),
        "langgraph-checkpoint-sqlite": version("langgraph-checkpoint-sqlite"),
    }
    points = sorted(int(t) for t in args.turns.split(","))
    db = workdir / "checkpoints.sqlite"
    conn = sqlite3.connect(db, check_same_thread=False)
    saver = _timed_saver(conn)
    saver.setup()  # journal_mode=WAL, as the saver sets it; synchronous stays SQLite's default
    if args.synchronous:
        conn.execute(f"PRAGMA synchronous={args.synchronous}")
    journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    out["durability"] = f"sqlite journal_mode={journal} synchronous={_SYNCHRONOUS.get(sync, sync)}"
    graph, human = _graph(args.variant, args.snapshot_frequency, saver)
    config = {"configurable": {"thread_id": "conversation"}, "recursion_limit": 50}
    marks = {"checkpoints": 0, "writes": 0}
    turns: list[dict[str, float]] = []
    out["turns"], out["points"] = turns, []
    _peer.progress(f"langgraph {out['version']['langgraph']} ({args.variant}): {out['durability']}")
    for turn in range(1, max(points) + 1):
        saver.seconds = 0.0
        started = time.perf_counter()
        message = human(conv.user_message(turn), id=f"u-{turn}")
        result = graph.invoke({"messages": [message]}, config, durability="sync")
        wall = time.perf_counter() - started
        if result["messages"][-1].id != f"b-{turn}":
            raise RuntimeError(f"turn {turn} ended with {result['messages'][-1]!r}")
        added = 0
        for table, column in (
            ("checkpoints", "length(checkpoint) + length(metadata)"),
            ("writes", "length(value)"),
        ):
            size, last = conn.execute(
                f"SELECT coalesce(sum({column}), 0), max(rowid) FROM {table} WHERE rowid > ?",
                (marks[table],),
            ).fetchone()
            added += size
            marks[table] = last or marks[table]
        turns.append({"turn": turn, "wall_s": wall, "saver_s": saver.seconds, "bytes": added})
        if turn in points:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            files = [db, Path(f"{db}-wal")]
            on_disk = sum(p.stat().st_size for p in files if p.exists())
            checkpoints = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
            out["points"].append(
                {
                    "turns": turn,
                    "db_bytes": on_disk,
                    "checkpoints": checkpoints,
                    "payload_bytes": sum(t["bytes"] for t in turns),
                    "text_bytes": sum(conv.turn_bytes(t) for t in range(1, turn + 1)),
                }
            )
            _peer.progress(
                f"  langgraph ({args.variant}) {turn} turns: {on_disk / 1e6:,.1f} MB on disk, "
                f"last turn {added / 1e3:,.0f} kB in {wall * 1e3:.1f} ms "
                f"({saver.seconds * 1e3:.1f} ms in the saver)"
            )
    conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", default="10,100,1000", help="report the database at these")
    parser.add_argument("--variant", choices=("messages", "delta"), default="messages")
    parser.add_argument("--snapshot-frequency", type=int, default=100, help="delta variant")
    parser.add_argument(
        "--synchronous", default="", help="SQLite synchronous (default: leave the saver's)"
    )
    parser.add_argument("--dir", help="where the database goes (default: a temporary directory)")
    args = parser.parse_args(argv)
    out: dict[str, Any] = {
        "peer": "langgraph",
        "variant": args.variant,
        "error": None,
        "points": [],
        "turns": [],
    }
    with (
        _peer.stdout_to_stderr() as real,
        tempfile.TemporaryDirectory(prefix="langgraph-bench-", dir=args.dir) as workdir,
    ):
        try:
            _measure(out, args, Path(workdir))
        except BaseException as exc:  # an error row is the contract, even on Ctrl-C
            traceback.print_exc(file=sys.stderr)
            out["error"] = f"{type(exc).__name__}: {exc}".strip()
        real.write(json.dumps(out) + "\n")
        real.flush()
    return 0 if out["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
