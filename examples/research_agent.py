"""A research-style agent that asks a human before it concludes, and waits durably.

Start it with a worker running (`torpor worker`), then answer its question from anywhere:

    python examples/research_agent.py             # prints the run id and waits
    torpor send RUN human '{"text": "Focus on costs"}'

The wait survives worker restarts; a parked run holds no worker while it waits.
Offline (no API key), a scripted model plays the part.
"""

from __future__ import annotations

import os

import torpor
from torpor.testing import ScriptedModelServer, ScriptedRequest, reply_text, reply_tool_calls


def note(topic: str, finding: str) -> str:
    """Record a finding.

    Args:
        topic: what the finding is about.
        finding: one sentence.
    """
    return f"noted under {topic}: {finding}"


def offline_script(request: ScriptedRequest) -> torpor.agent.ModelReply:
    done = len(request.tool_results)
    if done == 0:
        return reply_tool_calls(
            [("note", {"topic": "durability", "finding": "replay re-runs from a journal"})],
            ids=["n1"],
        )
    if done == 1:
        return reply_tool_calls(
            [("ask_human", {"question": "Which angle should the summary take?"})], ids=["q1"]
        )
    return reply_text(f"Summary, as asked ({request.tool_results[-1].content}): journals win.")


def main() -> None:
    server = None
    model, base_url = os.environ.get("TORPOR_MODEL", "openai:gpt-4.1-mini"), None
    if not os.environ.get("OPENAI_API_KEY") and not os.environ.get("ANTHROPIC_API_KEY"):
        server = ScriptedModelServer(offline_script).start()
        os.environ["OPENAI_API_KEY"] = "offline"
        model, base_url = "openai:scripted", server.openai_base_url
    try:
        agent = torpor.Agent(model, tools=[note, "ask_human"], base_url=base_url)
        run = torpor.start(agent.run, "Research durable execution; ask me for the angle.")
        print(f"run {run.id} is waiting for you:  torpor send {run.id} human "
              "'{\"text\": \"costs\"}'")  # fmt: skip
        print(run.result())
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
