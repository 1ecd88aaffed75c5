"""The agent loop through the official OpenAI and Anthropic SDKs against the scripted
model server, on SQLite and PostgreSQL; and an agent crashed with SIGKILL mid-run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import torpor
from conftest import torpor_env
from torpor import RunStatus, TorporError
from torpor.agent import ModelReply, ToolCall, Usage
from torpor.agent._agent import Agent
from torpor.agent._tools import Tool
from torpor.store import Store
from torpor.testing import (
    ScriptedModelServer,
    ScriptedRequest,
    WorkerGroup,
    reply_text,
    reply_tool_calls,
    wait_until,
)

sys.path.insert(0, str(Path(__file__).parent / "workflows"))
from agent_tools import add, boom, slow_add

PROVIDERS = ["openai", "anthropic"]


@pytest.fixture(autouse=True)
def runtime(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TORPOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    torpor.configure(store=store)
    yield store
    torpor.configure(store=store)


def _agent(provider: str, server: ScriptedModelServer, **kwargs) -> Agent:
    base = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    return Agent(f"{provider}:scripted", base_url=base, **kwargs)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_agent_loop_with_tools_errors_and_usage(provider: str, store: Store) -> None:
    bad_arguments = (
        # OpenAI sends arguments as a string, which a model can garble; Anthropic sends an
        # object, which can still have the wrong types.
        ModelReply([ToolCall("c3", "add", None, '{"a": 1, "b":')], Usage(7, 3), "", "tool_use")
        if provider == "openai"
        else reply_tool_calls([("add", {"a": "one", "b": 2})], ids=["c3"])
    )
    script = [
        reply_tool_calls(
            [("add", {"a": 2, "b": 3}), ("write_file", {"path": "notes/a.txt", "content": "hi"})],
            ids=["c1", "c2"],
            text="Let me compute and save.",
        ),
        bad_arguments,
        reply_tool_calls([("boom", {"reason": "testing"}), ("nope", {})], ids=["c4", "c5"]),
        reply_text("The sum is 5.", usage=Usage(120, 9)),
    ]
    with ScriptedModelServer(script) as server:
        agent = _agent(provider, server, tools=[add, boom, "write_file"], system="Be brief.")
        run = torpor.start(agent.run, "Add 2 and 3, save a note.")
        assert run.result(timeout=60) == "The sum is 5."
        requests = list(server.calls)
    assert len(requests) == 4
    first = requests[0]
    assert first.api == provider and first.system == "Be brief."
    assert sorted(t.name for t in first.tools) == ["add", "boom", "write_file"]
    add_schema = next(t for t in first.tools if t.name == "add")
    assert add_schema.description == "Add two whole numbers."
    assert add_schema.parameters["properties"]["a"] == {
        "type": "integer",
        "description": "the first number.",
    }
    # The second request carries the first turn's tool results back to the model.
    assert [(r.id, r.content, r.is_error) for r in requests[1].tool_results] == [
        ("c1", "5", False),
        ("c2", "wrote 2 bytes to notes/a.txt", False),
    ]
    results = {r.id: r for r in requests[3].tool_results}
    assert results["c3"].is_error and "arguments" in results["c3"].content
    assert results["c4"].is_error and results["c4"].content == "RuntimeError: boom: testing"
    assert results["c5"].is_error and "there is no tool 'nope'" in results["c5"].content

    log = run.log()
    calls = [e.payload["result"] for e in log if e.kind == "model_call"]
    assert len(calls) == 4
    assert calls[-1]["usage"] == {"input_tokens": 120, "output_tokens": 9}
    assert all(c["usage"]["input_tokens"] > 0 for c in calls)
    assert calls[0]["items"][0] == {"type": "assistant", "text": "Let me compute and save."}
    tool_results = [e.payload["result"] for e in log if e.kind == "tool_result"]
    assert [r["id"] for r in tool_results] == ["c1", "c2", "c3", "c4", "c5"]
    assert log[0].kind == "user" and log[0].payload["result"]["text"].startswith("Add 2")
    workspace = Path(torpor.Settings.from_env().home) / "workspaces" / run.id
    assert (workspace / "notes" / "a.txt").read_text() == "hi"


def test_max_turns_fails_the_run_clearly(store: Store) -> None:
    def always_tools(request: ScriptedRequest) -> ModelReply:
        n = len(request.tool_results)
        return reply_tool_calls([("add", {"a": n, "b": 1})], ids=[f"c{n}"])

    with ScriptedModelServer(always_tools) as server:
        agent = _agent("openai", server, tools=[add], max_turns=3)
        run = torpor.start(agent.run, "loop forever")
        with pytest.raises(torpor.RunFailedError, match="3 turns without a final answer"):
            run.result(timeout=60)
        assert server.call_count == 3


def test_configuration_errors_come_before_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(TorporError, match="set OPENAI_API_KEY"):
        Agent("openai:gpt-4.1-mini")
    with pytest.raises(TorporError, match="PROVIDER:MODEL"):
        Agent("gpt-4.1-mini")
    with pytest.raises(TorporError, match="unknown builtin tool 'rm_rf'"):
        Agent("anthropic:claude-sonnet-4-5", tools=["rm_rf"])


def test_builtin_file_tools_stay_in_the_workspace(tmp_path: Path) -> None:
    from torpor.agent._tools import current_workspace

    token = current_workspace.set(tmp_path / "ws")
    try:
        write = Tool.from_function(__import__("torpor.agent._tools", fromlist=["x"]).write_file)
        assert not write.call({"path": "a/b.txt", "content": "x"}).is_error
        escaped = write.call({"path": "../../etc/passwd", "content": "x"})
        assert escaped.is_error and "outside the workspace" in escaped.content
        shell = Tool.from_function(__import__("torpor.agent._tools", fromlist=["x"]).shell)
        out = shell.call({"command": "cat a/b.txt; exit 3"})
        assert out.content == "exit code 3\nx"
        slow = shell.call({"command": "sleep 5", "timeout": 0.2})
        assert slow.content.startswith("timed out after 0.2 s")
    finally:
        current_workspace.reset(token)


def _crash_script(request: ScriptedRequest) -> ModelReply:
    """Pure in the conversation, so a turn sent twice would get the same answer."""
    n = len(request.tool_results)
    if n < 3:
        return reply_tool_calls([("slow_add", {"a": n, "b": 10})], ids=[f"c{n}"])
    total = sum(int(r.content) for r in request.tool_results)
    return reply_text(f"total {total}")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_agent_killed_mid_run_finishes_with_the_same_answer_and_no_repeated_calls(
    provider: str, store: Store, db_url: str, tmp_path: Path
) -> None:
    calls_file = tmp_path / "calls.txt"
    with ScriptedModelServer(_crash_script) as server:
        reference = torpor.start(_agent(provider, server, tools=[slow_add]).run, "add up")
        expected = reference.result(timeout=60)
        reference_calls = server.call_count
    assert expected == "total 33" and reference_calls == 4

    env = torpor_env(db_url, tmp_path / "home", OPENAI_API_KEY="k", ANTHROPIC_API_KEY="k",
                     TORPOR_TEST_CALLS=str(calls_file))  # fmt: skip
    ready = tmp_path / "ready"
    with (
        ScriptedModelServer(_crash_script) as server,
        WorkerGroup("--lease", "1.5", env=env, logs=tmp_path / "logs") as workers,
    ):
        agent = _agent(provider, server, tools=[slow_add])
        run = torpor.start(agent.run, "add up", detach=True)
        first = workers.start(TORPOR_TEST_HANG="slow_add", TORPOR_TEST_READY=str(ready))
        wait_until(lambda: ready.exists() or first.poll() is not None, "the worker to hang")
        assert first.poll() is None, first.log()
        first.kill()
        workers.start()
        assert run.result(timeout=90) == expected
        requests = list(server.calls)
    record = store.get_run(run.id)
    assert record.status is RunStatus.COMPLETED and record.attempt == 2
    turns = [e for e in run.log() if e.kind == "model_call"]
    assert len(turns) == 4
    # Every model call was answered once: the recovered run replayed the first turn from
    # its journal instead of asking the model again.
    assert len(requests) == 4
    assert [len(r.tool_results) for r in requests] == [0, 1, 2, 3]
    assert calls_file.read_text().splitlines() == [
        "slow_add 0 10",
        "slow_add 1 10",
        "slow_add 2 10",
    ]
