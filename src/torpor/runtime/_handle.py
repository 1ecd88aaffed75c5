"""`Run`: a handle on a run, from anywhere, and a durable wait for a child run's end from
inside a workflow."""

from __future__ import annotations

import time
import typing
from typing import Any

from .._errors import RunCancelledError, RunFailedError, TorporError
from .._model import LogEntry, RunRecord, RunStatus
from ..engine import current, from_json, in_step, lookup_workflow
from ..store import Store
from ._process import running_executor, the_store

__all__ = ["Run"]


class Run:
    """A handle on a run: ``run.id``, ``run.status()``, ``run.result(timeout)``."""

    def __init__(self, run_id: str, store: Store | None = None) -> None:
        self.id = run_id
        self._store = store

    @property
    def store(self) -> Store:
        return self._store or the_store()

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    def record(self) -> RunRecord:
        ctx = current()
        if self._store is None and ctx is not None:
            return ctx.journal.child(self.id)  # inside a workflow: its child, via its journal
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
        if current() is not None and not in_step.get():
            return self._durable_result(timeout)
        end = None if timeout is None else time.monotonic() + timeout
        executor = running_executor()
        if executor is not None and (finished := executor.finished(self.id)) is not None:
            # Executing in this process: wake up when it ends rather than polling the store.
            finished.wait(timeout)
        delay = 0.01
        while True:
            record = self.record()
            if record.status.terminal:
                return _outcome(record)
            executor = running_executor()
            if executor is not None and executor.executed(self.id) and _claimable(record):
                # A run this process started and parked or suspended, now due (its event
                # came): take it again here, since the caller waits for it in this process.
                executor.claim(run_id=self.id)
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
        entry = ctx.recorded(pos, ("child_result",), f"result of child run {self.id}")
        if entry is None:
            ctx.boundary()

            def poll() -> tuple[bool, Any]:
                with ctx.owned_write():
                    record = ctx.journal.child(self.id)
                return (True, record) if record.status.terminal else (False, None)

            deadline = None if timeout is None else time.time() + timeout
            done, record = ctx.block(poll, deadline, wake_on={"child": self.id})
            if not done:
                raise TimeoutError(f"child run {self.id} did not end within {timeout:g} s")
            payload = {
                "pos": pos,
                "child": self.id,
                "workflow": record.workflow,
                "status": record.status.value,
                "output": record.output,
                "error": record.error,
            }
            ctx.record("child_result", payload)
        else:
            payload = entry.payload
        # Answered from the log: no need to look the child up (a replay may not be able to).
        workflow = payload.get("workflow")
        if workflow is None:  # recorded before the entry named it: only for the return type
            try:
                workflow = ctx.journal.child(self.id).workflow
            except TorporError:
                workflow = None
        return _result(
            self.id, RunStatus(payload["status"]), payload.get("output"), payload.get("error"),
            workflow,
        )  # fmt: skip


def _claimable(record: RunRecord) -> bool:
    if record.lease_owner is not None:
        return False
    if record.status is RunStatus.QUEUED:  # released, e.g. after its sandbox died
        return True
    due = record.wake_at is not None and record.wake_at <= time.time()
    return record.status in (RunStatus.WAITING, RunStatus.SUSPENDED) and due


def _outcome(record: RunRecord) -> Any:
    return _result(record.id, record.status, record.output, record.error, record.workflow)


def _result(run_id: str, status: RunStatus, output: Any, error: Any, workflow: str | None) -> Any:
    if status is RunStatus.COMPLETED:
        return from_json(output, None if workflow is None else _return_type(workflow))
    if status is RunStatus.CANCELLED:
        raise RunCancelledError(run_id)
    raise RunFailedError(run_id, error)


def _return_type(workflow: str) -> Any:
    try:
        wf = lookup_workflow(workflow)
        return typing.get_type_hints(wf.fn).get("return")
    except Exception:
        return None
