"""`torpor demo`: a coding agent, crashed with SIGKILL mid-run and resumed, offline.

The model is torpor's scripted model server on loopback, reached through the official
OpenAI SDK; the worker is a real `torpor worker` process; the store is the embedded default.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._config import Settings
from ..agent import Agent, ModelReply
from ..runtime import Run, configure, send, start
from ..sandbox import find_criu
from ..store import Store
from ..testing import (
    ScriptedModelServer,
    ScriptedRequest,
    WorkerProcess,
    reply_text,
    reply_tool_calls,
    wait_until,
)

__all__ = ["run_demo"]

TASK = "Write a small word-count tool with a test, run it, and ask before publishing a report."

_APP = """import sys
from collections import Counter

def top_words(text, n=3):
    return Counter(text.lower().split()).most_common(n)

if __name__ == "__main__":
    print(top_words("the cat and the hat and the bat"))
"""
_TEST = """from app import top_words
assert top_words("a b a c a b") == [("a", 3), ("b", 2), ("c", 1)]
print("1 test passed")
"""


def _script(request: ScriptedRequest) -> ModelReply:
    """A pure function of the conversation: a re-sent turn gets the same reply."""
    done = len(request.tool_results)

    def calls(*pairs: tuple[str, dict[str, Any]]) -> ModelReply:
        return reply_tool_calls(list(pairs), ids=[f"call-{done}-{i}" for i in range(len(pairs))])

    if done == 0:
        return calls(("write_file", {"path": "app.py", "content": _APP}))
    if done == 1:
        # Slow on purpose: the demo kills the worker while this command runs.
        return calls(("shell", {"command": "sleep 1.5; python3 app.py"}))
    if done == 2:
        return calls(
            ("write_file", {"path": "test_app.py", "content": _TEST}),
            ("shell", {"command": "python3 test_app.py"}),
        )
    if done == 4:
        return calls(("ask_human", {"question": "Tests pass. May I publish REPORT.md?"}))
    if done == 5:
        return calls(
            ("write_file", {"path": "REPORT.md", "content": "# Report\nword counts: ok\n"}),
            ("list_files", {"path": "."}),
        )
    return reply_text("Done: app.py and its test pass; REPORT.md is published.")


@dataclass
class _RoadResult:
    road: str
    skipped: str | None = None
    turns: int = 0
    model_calls_paid: int = 0
    tool_results: int = 0
    recovery_s: float = 0.0
    answer: str = ""
    run_id: str = ""
    snapshots: list[tuple[int, int]] = field(default_factory=list)
    suspended: int = 0


def _worker(env: dict[str, str]) -> WorkerProcess:
    # In a session of its own: a kill ends the shell command the agent is running, too.
    return WorkerProcess(
        "--lease", "1.5", "--park-after", "30",
        env=env,
        log=Settings.from_env().home / "logs" / "demo-workers.log",
        own_session=True,
        grace=60,
    )  # fmt: skip


def _agent_run(
    road: str, store: Store, server: ScriptedModelServer, echo: Callable[[str], None]
) -> _RoadResult:
    # The endpoint is the workers' configuration: code in a sandbox cannot choose one.
    env = {
        **os.environ,
        "OPENAI_API_KEY": os.environ["OPENAI_API_KEY"],
        "OPENAI_BASE_URL": server.openai_base_url,
    }
    if road == "snapshot":
        env["TORPOR_CHECKPOINT_POLICY"] = "step"  # a snapshot after every recorded step
    agent = Agent(
        "openai:scripted-coder",
        tools=["write_file", "read_file", "list_files", "shell", "ask_human"],
        system="You are a careful coding agent.",
    )
    handle: Run = start(agent.run, TASK, detach=True, road=road)
    result = _RoadResult(road, run_id=handle.id)
    echo(f"  started run {handle.id} and a worker process")
    worker = _worker(env)
    try:

        def kinds() -> list[str]:
            return [e.kind for e in store.read(handle.id)]

        wait_until(lambda: kinds().count("model_call") >= 2, "the second model call")
        time.sleep(0.7)  # the agent is now inside `sleep 1.5; python3 app.py`
        worker.kill()
        killed = time.monotonic()
        echo("  SIGKILLed the worker in the middle of a shell command (turn 2)")
        worker = _worker(env)
        taken_over = "restored" if road == "snapshot" else "recovered"
        wait_until(lambda: taken_over in kinds(), "the run to be taken over")
        result.recovery_s = time.monotonic() - killed
        how = "restored its newest snapshot" if road == "snapshot" else "replayed its journal"
        echo(f"  a new worker took the run over after {result.recovery_s:.1f} s "
             f"(lease expiry) and {how}")  # fmt: skip
        wait_until(lambda: "wait" in kinds(), "the agent to ask for approval")
        if road == "snapshot":
            wait_until(lambda: "suspended" in kinds(), "the waiting sandbox to be suspended")
            echo("  the agent waits for a human: its sandbox was checkpointed and stopped "
                 "(suspended: no process, no memory held)")  # fmt: skip
        echo("  the agent asks: 'Tests pass. May I publish REPORT.md?' → the demo approves")
        send(handle.id, "human", {"text": "Yes, publish it."})
        result.answer = str(handle.result(timeout=120))
    finally:
        worker.close()
    entries = store.read(handle.id)
    result.turns = sum(1 for e in entries if e.kind == "model_call")
    result.tool_results = sum(1 for e in entries if e.kind == "tool_result")
    result.model_calls_paid = server.call_count
    result.snapshots = [(s.stored_bytes, s.raw_bytes) for s in store.list_snapshots(handle.id)]
    result.suspended = sum(1 for e in entries if e.kind == "suspended")
    return result


def run_demo(open_store: Callable[[], Store], echo: Callable[[str], None]) -> None:
    t0 = time.monotonic()
    echo("torpor demo: a coding agent (scripted model, offline) crashed mid-run and resumed\n")
    store = open_store()
    configure(store=store)
    os.environ.setdefault("OPENAI_API_KEY", "demo-key-for-the-scripted-server")
    results: list[_RoadResult] = []

    skipped: str | None = None
    try:
        find_criu()
    except Exception as exc:  # any reason is reported, not raised
        skipped = str(exc)

    echo("replay road (journal every step, re-run from the top after a crash):")
    with ScriptedModelServer(_script) as server:
        results.append(_agent_run("replay", store, server, echo))
    if skipped is None:
        echo("\nsnapshot road (the agent in a sandbox, checkpointed with CRIU):")
        with ScriptedModelServer(_script) as server:
            results.append(_agent_run("snapshot", store, server, echo))
    else:
        echo(f"\nsnapshot road: skipped — {skipped}")
        results.append(_RoadResult("snapshot", skipped=skipped))

    echo("\n" + _summary(results))
    for result in results:
        if not result.skipped:
            echo(f"\n{result.road} road final answer: {result.answer}")
            echo(f"  see the log: torpor log {result.run_id}")
    echo(f"(demo took {time.monotonic() - t0:.1f} s)")
    store.close()


def _summary(results: list[_RoadResult]) -> str:
    rows = [("", *(r.road for r in results))]
    rows.append(("turns (model calls recorded)", *(_n(r, r.turns) for r in results)))
    rows.append(("model calls paid for", *(_n(r, r.model_calls_paid) for r in results)))
    rows.append(("tool results recorded", *(_n(r, r.tool_results) for r in results)))
    rows.append(("recovery after SIGKILL", *(
        "—" if r.skipped else f"{r.recovery_s:.1f} s" for r in results)))  # fmt: skip
    rows.append(("snapshots stored", *(_sizes(r) for r in results)))
    rows.append(
        (
            "suspended while waiting",
            *("—" if r.skipped or r.road == "replay" else f"{r.suspended}x" for r in results),
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def _sizes(result: _RoadResult) -> str:
    if result.skipped:
        return "—"
    if result.road == "replay":
        return "none (journal only)"
    if not result.snapshots:
        return "0"
    first = result.snapshots[0][0]
    later = sorted(stored for stored, _ in result.snapshots[1:])
    text = f"{len(result.snapshots)}: first {first / 1e6:.1f} MB"
    if later:
        text += f", then ~{later[len(later) // 2] / 1e3:.0f} kB each"
    return text


def _n(result: _RoadResult, value: int) -> str:
    return "skipped" if result.skipped else str(value)
