"""Starting runs and talking to them: `start`, `send`, `cancel` — the same calls from a
script, a worker or inside a workflow (where `start` makes a recorded child run)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._errors import TorporError
from .._model import Road, RunStatus
from ..engine import (
    ChildSpec,
    WorkflowDef,
    current,
    encode_input,
    in_step,
    lookup_workflow,
    workflow_def,
)
from ..store import Store
from ._handle import Run
from ._process import the_executor, the_store

__all__ = ["cancel", "send", "start"]


def _as_workflow(fn: Callable[..., Any] | str) -> WorkflowDef:
    if isinstance(fn, str):
        return lookup_workflow(fn)
    wf = workflow_def(fn)
    if wf is None:
        raise TorporError(
            f"{getattr(fn, '__qualname__', fn)!r} is not a workflow; decorate it with "
            "@torpor.workflow()"
        )
    return wf


def start(
    fn: Callable[..., Any] | str,
    *args: Any,
    road: str | Road = Road.REPLAY,
    detach: bool = False,
    queue: str = "default",
    priority: int = 0,
    store: Store | None = None,
    **kwargs: Any,
) -> Run:
    """Start a run of workflow ``fn`` with these arguments and return its handle.

    Executes it in this process (threads of an embedded worker) unless ``detach``, which
    only enqueues it for `torpor worker` processes. Inside a workflow, starts a child run
    (recorded: a replay gets the same child back).

    ``store``: another store than this process's (the HTTP server's; only with ``detach``).
    """
    # Objects whose methods start as a generic workflow (an Agent's `run`) say how.
    owner_hook = getattr(getattr(fn, "__self__", None), "__torpor_start__", None)
    if callable(owner_hook):
        fn, args = owner_hook(args)
    wf = _as_workflow(fn)
    road = Road(road)
    data = encode_input(args, kwargs)
    ctx = current()
    if ctx is not None and not in_step.get():
        return _start_child(wf, road, data, queue, priority)
    if store is not None and not detach:
        raise TorporError("start(store=...) enqueues only: pass detach=True")
    store = store or the_store()
    if detach:
        run = store.create_run(
            wf.name, road=road, input=data, queue=queue, priority=priority, source=wf.source
        )
        return Run(run.id, store)
    executor = the_executor()
    run = store.create_run(
        wf.name, road=road, input=data, queue=queue, priority=priority, source=wf.source,
        owner=executor.worker_id, lease_seconds=executor.lease_seconds,
    )  # fmt: skip
    executor.submit(run)
    return Run(run.id, store)


def _start_child(
    wf: WorkflowDef, road: Road, data: dict[str, Any], queue: str, priority: int
) -> Run:
    ctx = current()
    assert ctx is not None
    pos = ctx.next_position()
    entry = ctx.recorded(pos, ("child",), f"torpor.start({wf.name})")
    if entry is not None:
        return Run(str(entry.payload["child"]))
    ctx.boundary()
    # The child's id follows from the parent's and the position: after a crash between
    # creating the child and recording it, the replay finds the same child, not a twin.
    child_id = f"{ctx.run.id}-{pos}"
    if ctx.timeline:  # after a rollback: not the abandoned timeline's child
        child_id += f"t{ctx.timeline}"
    spec = ChildSpec(child_id, wf.name, road, data, queue, priority, wf.source)
    with ctx.owned_write():
        ctx.journal.start_child(spec)
    ctx.record("child", {"pos": pos, "workflow": wf.name, "child": child_id})
    return Run(child_id)


def send(run_id: str, name: str, payload: Any = None) -> None:
    """Deliver the event ``name`` to a run (it may be waiting for it, or wait later)."""
    the_store().send_event(run_id, name, payload)


def cancel(run_id: str) -> RunStatus:
    """Cancel a run: at once if idle, else at its next step boundary."""
    return the_store().cancel_run(run_id).status
