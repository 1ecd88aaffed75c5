"""`torpor demo`: for now a preview of the context log; the crashed-and-resumed agent on both
roads replaces it when the agent and the roads are in."""

from __future__ import annotations

from collections.abc import Callable

from .._model import RunStatus
from ..log import ContextLog, describe_entry
from ..store import Store

__all__ = ["run_demo"]

_CONVERSATION = [
    ("user", {"text": "What is in the workspace?"}),
    ("tool_call", {"id": "call-1", "name": "list_files", "arguments": {"path": "."}}),
    ("tool_result", {"id": "call-1", "content": "notes.md\nplan.txt", "is_error": False}),
    ("assistant", {"text": "Two files: notes.md and plan.txt."}),
]


def run_demo(open_store: Callable[[], Store], echo: Callable[[str], None]) -> None:
    echo("torpor demo (preview): the durable agent demonstration is not in this version yet.")
    echo("Meanwhile, this writes a short conversation to a run's context log and reads it back.\n")
    with open_store() as store:
        run = store.create_run("torpor.demo:preview", input={"task": "list the workspace"})
        log = ContextLog(store)
        for seq, (kind, payload) in enumerate(_CONVERSATION, start=1):
            log.append(run.id, kind, payload, expected_seq=seq)
        store.update_run(run.id, run.epoch, status=RunStatus.COMPLETED, output="done")
        echo(f"run {run.id} ({store.url}):")
        for entry in log.read(run.id):
            echo(describe_entry(entry))
    echo(f"\nSee it again with: torpor log {run.id}   (or torpor ps --all)")
