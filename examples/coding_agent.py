"""A coding agent that writes files and runs commands in its workspace, durably.

With OPENAI_API_KEY (or ANTHROPIC_API_KEY and TORPOR_MODEL=anthropic:...) it uses the real
model; without, a scripted model on loopback plays the part so the example runs offline.

    python examples/coding_agent.py
"""

from __future__ import annotations

import os

import torpor
from torpor.testing import ScriptedModelServer, ScriptedRequest, reply_text, reply_tool_calls

TASK = "Create hello.py printing a greeting, run it, and tell me what it printed."


def offline_script(request: ScriptedRequest) -> torpor.agent.ModelReply:
    done = len(request.tool_results)
    if done == 0:
        code = 'print("hello from the agent")\n'
        return reply_tool_calls([("write_file", {"path": "hello.py", "content": code})], ids=["w"])
    if done == 1:
        return reply_tool_calls([("shell", {"command": "python3 hello.py"})], ids=["s"])
    return reply_text(f"It printed: {request.tool_results[-1].content.splitlines()[-1]}")


def main() -> None:
    model = os.environ.get("TORPOR_MODEL", "openai:gpt-4.1-mini")
    server = None
    if not os.environ.get("OPENAI_API_KEY") and not os.environ.get("ANTHROPIC_API_KEY"):
        server = ScriptedModelServer(offline_script).start()
        os.environ["OPENAI_API_KEY"] = "offline"
        model = "openai:scripted"
    try:
        agent = torpor.Agent(
            model,
            tools=["write_file", "read_file", "list_files", "shell"],
            system="You are a concise coding agent. Work in the workspace.",
            base_url=server.openai_base_url if server else None,
        )
        run = torpor.start(agent.run, TASK)
        print(run.result(timeout=600))
        print(f"log: torpor log {run.id}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
