"""`torpor demo`: a coding agent, crashed with SIGKILL mid-run and resumed, offline.

The model is torpor's scripted model server on loopback, reached through the official
OpenAI SDK; the worker is a real `torpor worker` process; the store is the embedded default.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..agent import Agent, ModelReply
from ..runtime import Run, configure, send, start
from ..sandbox import find_criu
from ..store import Store
from ..testing import ScriptedModelServer, ScriptedRequest, reply_text, reply_tool_calls

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


def _worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "torpor", "worker", "--lease", "1.5", "--park-after", "30"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"the demo waited {timeout:g} s for {what}")


def _replay_road(
    store: Store, server: ScriptedModelServer, echo: Callable[[str], None]
) -> _RoadResult:
    env = {**os.environ, "OPENAI_API_KEY": os.environ["OPENAI_API_KEY"]}
    agent = Agent(
        "openai:scripted-coder",
        tools=["write_file", "read_file", "list_files", "shell", "ask_human"],
        system="You are a careful coding agent.",
        base_url=server.openai_base_url,
    )
    handle: Run = start(agent.run, TASK, detach=True)
    result = _RoadResult("replay", run_id=handle.id)
    echo(f"  started run {handle.id} and a worker process")
    worker = _worker(env)
    try:

        def kinds() -> list[str]:
            return [e.kind for e in store.read(handle.id)]

        _wait_for(lambda: kinds().count("model_call") >= 2, "the second model call")
        time.sleep(0.5)  # the agent is now inside `sleep 1.5; python3 app.py`
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        killed = time.monotonic()
        echo("  SIGKILLed the worker in the middle of a shell command (turn 2)")
        worker = _worker(env)
        _wait_for(lambda: "recovered" in kinds(), "the run to be taken over")
        result.recovery_s = time.monotonic() - killed
        echo(f"  a new worker took the run over after {result.recovery_s:.1f} s "
             "(lease expiry) and replayed its journal")  # fmt: skip
        _wait_for(lambda: "wait" in kinds(), "the agent to ask for approval")
        echo("  the agent asks: 'Tests pass. May I publish REPORT.md?' → the demo approves")
        send(handle.id, "human", {"text": "Yes, publish it."})
        result.answer = str(handle.result(timeout=60))
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
    entries = store.read(handle.id)
    result.turns = sum(1 for e in entries if e.kind == "model_call")
    result.tool_results = sum(1 for e in entries if e.kind == "tool_result")
    result.model_calls_paid = server.call_count
    return result


def run_demo(open_store: Callable[[], Store], echo: Callable[[str], None]) -> None:
    t0 = time.monotonic()
    echo("torpor demo: a coding agent (scripted model, offline) crashed mid-run and resumed\n")
    store = open_store()
    configure(store=store)
    os.environ.setdefault("OPENAI_API_KEY", "demo-key-for-the-scripted-server")
    results: list[_RoadResult] = []

    snapshot = _RoadResult("snapshot")
    try:
        criu = find_criu()
        snapshot.skipped = (
            f"CRIU {criu.version} is here, but the snapshot road's runtime (sandboxed runs, "
            "suspend and restore) is not in this version yet"
        )
    except Exception as exc:
        snapshot.skipped = str(exc)

    echo("replay road:")
    with ScriptedModelServer(_script) as server:
        results.append(_replay_road(store, server, echo))
    echo(f"\nsnapshot road: skipped — {snapshot.skipped}")
    results.append(snapshot)

    echo("\n" + _summary(results))
    replay = results[0]
    echo(f"\nfinal answer: {replay.answer}")
    echo(f"workspace:    {store_home()}/workspaces/{replay.run_id}")
    echo(f"see the log:  torpor log {replay.run_id}")
    echo(f"(demo took {time.monotonic() - t0:.1f} s)")
    store.close()


def store_home() -> str:
    from .._config import Settings

    return str(Settings.from_env().home)


def _summary(results: list[_RoadResult]) -> str:
    rows = [("", *(r.road for r in results))]
    rows.append(("turns (model calls recorded)", *(_n(r, r.turns) for r in results)))
    rows.append(("model calls paid for", *(_n(r, r.model_calls_paid) for r in results)))
    rows.append(("tool results recorded", *(_n(r, r.tool_results) for r in results)))
    rows.append(("recovery after SIGKILL", *(
        "—" if r.skipped else f"{r.recovery_s:.1f} s" for r in results)))  # fmt: skip
    rows.append(("snapshot sizes", *("—" if r.skipped else "n/a (journal)" for r in results)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def _n(result: _RoadResult, value: int) -> str:
    return "skipped" if result.skipped else str(value)
