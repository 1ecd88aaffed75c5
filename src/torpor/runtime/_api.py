"""The unified API of DESIGN.md: start runs, hold them by a `Run` handle, send, cancel,
fork and resume — the same calls from a script, a worker or inside a workflow."""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
import typing
from collections.abc import Callable
from typing import Any

from .._config import Settings
from .._errors import RunCancelledError, RunFailedError, RunNotFoundError, TorporError
from .._model import LogEntry, Road, RunRecord, RunStatus
from ..engine._codec import from_json
from ..engine._context import current, in_step
from ..engine._engine import encode_input
from ..engine._registry import WorkflowDef, lookup_workflow
from ..engine._steps import workflow_def
from ..store import Store, open_store
from ._executor import Executor

__all__ = ["Run", "cancel", "configure", "fork", "resume", "send", "start"]

_lock = threading.Lock()
_store: Store | None = None
_executor: Executor | None = None


def configure(database_url: str | None = None, *, store: Store | None = None) -> Store:
    """Choose the store this process uses (default: from the environment, on first use)."""
    global _store, _executor
    with _lock:
        if _executor is not None:
            _executor.close()
            _executor = None
        _store = store or open_store(database_url)
        return _store


def _the_store() -> Store:
    global _store
    with _lock:
        if _store is None:
            _store = open_store()
        return _store


def _the_executor() -> Executor:
    global _executor
    store = _the_store()
    with _lock:
        if _executor is None:
            _executor = Executor(store, lease_seconds=Settings.from_env().lease_seconds)
        return _executor


class Run:
    """A handle on a run: ``run.id``, ``run.status()``, ``run.result(timeout)``."""

    def __init__(self, run_id: str, store: Store | None = None) -> None:
        self.id = run_id
        self._store = store

    @property
    def store(self) -> Store:
        return self._store or _the_store()

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    def record(self) -> RunRecord:
        return self.store.get_run(self.id)

    def status(self) -> RunStatus:
        return self.record().status

    def log(self, after: int = 0) -> list[LogEntry]:
        return self.store.read(self.id, after=after)

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the run to end: its output, or `RunFailedError` / `RunCancelledError`.

        Inside a workflow this is a durable wait for a child run, recorded like a step.
        Elsewhere, `TimeoutError` after ``timeout`` seconds.
        """
        ctx = current()
        if ctx is not None and not in_step.get():
            return self._durable_result(timeout)
        end = None if timeout is None else time.monotonic() + timeout
        if _executor is not None and (finished := _executor.finished(self.id)) is not None:
            # Executing in this process: wake up when it ends rather than polling the store.
            finished.wait(timeout)
        delay = 0.01
        while True:
            record = self.record()
            if record.status.terminal:
                return _outcome(record)
            if _executor is not None and _executor.executed(self.id) and _claimable(record):
                # A run this process started and parked or suspended, now due (its event
                # came): take it again here, since the caller waits for it in this process.
                _executor.claim(run_id=self.id)
            if end is not None and time.monotonic() >= end:
                raise TimeoutError(
                    f"run {self.id} is still {record.status.value} after {timeout:g} s"
                )
            time.sleep(delay if end is None else min(delay, max(0.0, end - time.monotonic())))
            delay = min(delay * 1.5, 0.25)

    def _durable_result(self, timeout: float | None) -> Any:
        ctx = current()
        assert ctx is not None
        pos = ctx.next_position()
        called = f"result of child run {self.id}"
        entry = ctx.recorded(pos, ("child_result",), called)
        if entry is None:
            ctx.boundary()
            store = ctx.store

            def poll() -> tuple[bool, Any]:
                record = store.get_run(self.id)
                return (True, record) if record.status.terminal else (False, None)

            deadline = None if timeout is None else time.time() + timeout
            done, record = ctx.block(poll, deadline, lambda: poll()[0], wake_on={"child": self.id})
            if not done:
                raise TimeoutError(f"child run {self.id} did not end within {timeout:g} s")
            payload = {
                "pos": pos,
                "child": self.id,
                "status": record.status.value,
                "output": record.output,
                "error": record.error,
            }
            ctx.record("child_result", payload)
        else:
            payload = entry.payload
        record = ctx.store.get_run(self.id)
        return _outcome(record, status=RunStatus(payload["status"]), payload=payload)


def _claimable(record: RunRecord) -> bool:
    if record.lease_owner is not None:
        return False
    if record.status is RunStatus.QUEUED:  # released, e.g. after its sandbox died
        return True
    due = record.wake_at is not None and record.wake_at <= time.time()
    return record.status in (RunStatus.WAITING, RunStatus.SUSPENDED) and due


def _outcome(
    record: RunRecord, *, status: RunStatus | None = None, payload: dict[str, Any] | None = None
) -> Any:
    status = status or record.status
    output = record.output if payload is None else payload.get("output")
    error = record.error if payload is None else payload.get("error")
    if status is RunStatus.COMPLETED:
        return from_json(output, _return_type(record.workflow))
    if status is RunStatus.CANCELLED:
        raise RunCancelledError(record.id)
    raise RunFailedError(record.id, error)


def _return_type(workflow: str) -> Any:
    try:
        wf = lookup_workflow(workflow)
        return typing.get_type_hints(wf.fn).get("return")
    except Exception:
        return None


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
    store = store or _the_store()
    if detach:
        run = store.create_run(
            wf.name, road=road, input=data, queue=queue, priority=priority, source=wf.source
        )
        return Run(run.id, store)
    executor = _the_executor()
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
        child_id = str(entry.payload["child"])
        return Run(child_id, ctx.store)
    ctx.boundary()
    # The child's id follows from the parent's and the position: after a crash between
    # creating the child and recording it, the replay finds the same child, not a twin.
    child_id = f"{ctx.run.id}-{pos}"
    if ctx.timeline:  # after a rollback: not the abandoned timeline's child
        child_id += f"t{ctx.timeline}"
    try:
        ctx.store.get_run(child_id)
    except RunNotFoundError:
        ctx.store.create_run(
            wf.name, road=road, input=data, queue=queue, priority=priority,
            parent_id=ctx.run.id, run_id=child_id, source=wf.source,
        )  # fmt: skip
    ctx.record("child", {"pos": pos, "workflow": wf.name, "child": child_id})
    ctx.spawn(child_id)
    return Run(child_id, ctx.store)


def send(run_id: str, name: str, payload: Any = None) -> None:
    """Deliver the event ``name`` to a run (it may be waiting for it, or wait later)."""
    _the_store().send_event(run_id, name, payload)


def cancel(run_id: str) -> RunStatus:
    """Cancel a run: at once if idle, else at its next step boundary."""
    return _the_store().cancel_run(run_id).status


def fork(
    run_id: str,
    at: int | str | None = None,
    *,
    detach: bool = False,
    store: Store | None = None,
) -> Run:
    """A new run that continues from a point of ``run_id``'s history.

    Replay road: it reuses the recorded results of the calls before position ``at`` (all
    recorded calls if None) and executes from there. Snapshot road: it restores snapshot
    ``at`` (the newest if None) with its own copy-on-write workspace; its log starts as a
    copy of the parent's up to that snapshot.

    ``store``: another store than this process's (the HTTP server's; only with ``detach``).
    """
    store = store or _the_store()
    source = store.get_run(run_id)
    if source.road is Road.SNAPSHOT:
        return _fork_snapshot(store, source, None if at is None else str(at), detach)
    if isinstance(at, str):
        if not at.isdigit():
            raise TorporError(f"--at {at!r}: a replay-road run forks at a call position (1, 2…)")
        at = int(at)
    child = store.create_run(
        source.workflow,
        road=source.road,
        input=source.input,
        queue=source.queue,
        priority=source.priority,
        forked_from=run_id,
        source=source.source,
    )
    copied = 0
    for entry in store.read(run_id):
        pos = entry.payload.get("pos") if isinstance(entry.payload, dict) else None
        if isinstance(pos, int) and (at is None or pos < at):
            store.append(child.id, entry.kind, entry.payload)
            copied += 1
    store.append(child.id, "forked", {"from": run_id, "at": at, "copied": copied})
    if not detach:
        _the_executor().claim(run_id=child.id)
    return Run(child.id, store)


def _fork_snapshot(store: Store, source: RunRecord, at: str | None, detach: bool) -> Run:
    records = store.list_snapshots(source.id)
    if not records:
        raise TorporError(f"run {source.id} has no snapshot to fork from")
    if at is None:
        # The newest of the run's current timeline (any snapshot can be named with --at).
        abandoned = abandoned_snapshots(store, source.id)
        pick = next((r for r in reversed(records) if r.id not in abandoned), records[-1])
    else:
        matches = [r for r in records if r.id == at]
        if not matches:
            known = ", ".join(r.id for r in records[-5:])
            raise TorporError(f"run {source.id} has no snapshot {at!r}; its newest: {known}")
        pick = matches[0]
    child = store.create_run(
        source.workflow, road=source.road, input=source.input, queue=source.queue,
        priority=source.priority, forked_from=source.id, source=source.source,
    )  # fmt: skip
    for entry in store.read(source.id):
        if entry.seq > pick.seq:
            break
        store.append(child.id, entry.kind, entry.payload)
    # The child lists the parent's snapshot as its own: the chunks are shared (content
    # addressed), and its first claim restores it into a fresh copy-on-write sandbox.
    store.add_snapshot(
        dataclasses.replace(
            pick,
            id=f"{child.id}.s{pick.seq}.{secrets.token_hex(3)}",
            run_id=child.id,
            created_at=time.time(),
            stored_bytes=0,
            new_chunks=0,
        )
    )
    store.append(child.id, "forked", {"from": source.id, "snapshot": pick.id, "seq": pick.seq})
    if not detach:
        _the_executor().claim(run_id=child.id)
    return Run(child.id, store)


def resume(
    run_id: str,
    *,
    from_snapshot: str | None = None,
    detach: bool = False,
    store: Store | None = None,
) -> Run:
    """Queue a failed or cancelled replay-road run again (e.g. after fixing its code).

    Recorded results are kept; a step whose recorded error ended the run executes again.

    ``from_snapshot`` (snapshot road): roll the run back to that snapshot of its own, in
    whatever state it ended or waits (not while a worker executes it). The log keeps
    everything and records the rollback; what was recorded after the snapshot no longer
    answers the run's calls, events it consumed since are delivered again, and newer
    snapshots are not restored again.
    ``store``: another store than this process's (the HTTP server's; only with ``detach``).
    """
    store = store or _the_store()
    if from_snapshot is not None:
        _roll_back(store, run_id, from_snapshot)
        if not detach:
            _the_executor().claim(run_id=run_id)
        return Run(run_id, store)
    last = None
    for entry in store.read(run_id):
        if isinstance(entry.payload, dict) and isinstance(entry.payload.get("pos"), int):
            last = entry
    retry = None
    if last is not None and last.kind == "step" and "error" in last.payload:
        retry = last.payload["pos"]
    store.requeue_run(run_id, {"retry": retry})
    if not detach:
        _the_executor().claim(run_id=run_id)
    return Run(run_id, store)


def _roll_back(store: Store, run_id: str, snapshot_id: str) -> None:
    run = store.get_run(run_id)
    if run.road is not Road.SNAPSHOT:
        raise TorporError(
            f"run {run_id} is on the replay road: it has no snapshots to resume from "
            f"(`torpor fork {run_id} --at POS` re-executes it from a call position)"
        )
    abandoned = abandoned_snapshots(store, run_id)
    if snapshot_id in abandoned:
        raise TorporError(
            f"snapshot {snapshot_id!r} of run {run_id} is on a timeline an earlier rollback "
            f"left behind; fork it instead (`torpor fork {run_id} --at {snapshot_id}`)"
        )
    records = [r for r in store.list_snapshots(run_id) if r.id not in abandoned]
    index = next((i for i, r in enumerate(records) if r.id == snapshot_id), None)
    if index is None:
        known = ", ".join(r.id for r in records[-5:]) or "none"
        raise TorporError(
            f"run {run_id} has no snapshot {snapshot_id!r}; its newest: {known} "
            f"(`torpor snapshots {run_id}` lists them all)"
        )
    pick = records[index]
    store.rollback_run(
        run_id,
        pick.seq,
        {"snapshot": pick.id, "abandoned": [r.id for r in records[index + 1 :]]},
    )


def abandoned_snapshots(store: Store, run_id: str) -> set[str]:
    """Snapshots of timelines `resume --from` rolled the run back from: never restored
    into the run again (they can still be forked)."""
    left: set[str] = set()
    for entry in store.read(run_id):
        if entry.kind == "rollback" and isinstance(entry.payload, dict):
            left.update(entry.payload.get("abandoned", []))
    return left
