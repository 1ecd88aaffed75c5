"""The journal of an execution in the worker's own process (the replay road): the store,
written under the run's claim (its epoch)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import FencedError, RunNotFoundError
from .._model import Event, LogEntry, RunRecord, RunStatus
from ..log import wait_is_over
from ..store import Appended, RunEndedError, Store
from ._context import Parked
from ._journal import ChildSpec, HostCall, HostCallOutcome
from ._steps import execute_host_call

__all__ = ["StoreJournal", "create_child", "end_run", "lineage"]

log = logging.getLogger("torpor.worker")


@dataclass
class StoreJournal:
    """`Journal` over a `Store`, for one claim of ``run``.

    ``park_after``: seconds a wait may block this process before the run is parked
    (released until its event or deadline); None keeps it waiting here.
    ``spawn``: starts a child run (best effort: any worker may take it).
    """

    store: Store
    run: RunRecord
    workspace: Path
    spawn: Callable[[str], None]
    park_after: float | None = None
    lagging: bool = False  # the only writer of this run, and it read the whole log

    def read(self, after: int = 0) -> list[LogEntry]:
        return self.store.read(self.run.id, after=after)

    def append(self, kind: str, payload: Any) -> Appended:
        return self.store.append_owned(self.run.id, kind, payload, epoch=self.run.epoch)

    def append_result(self, kind: str, payload: dict[str, Any], *, after: int) -> Appended:
        # No copy of this execution can have recorded it: the log was read whole.
        return self.append(kind, payload)

    def safepoint(self, *, force: bool) -> None:
        """The journal is the whole state of a replay-road run: nothing to snapshot."""

    def set_status(self, status: RunStatus) -> None:
        self.store.update_run(self.run.id, self.run.epoch, status=status)

    def hold(self, deadline: float | None, wake_on: dict[str, str], waited: float) -> None:
        if self.park_after is not None and waited >= self.park_after:
            self.store.update_run(
                self.run.id, self.run.epoch, status=RunStatus.WAITING, wake_at=deadline,
                release=True,
            )  # fmt: skip
            # What it waits for may have come between the last look and the release, when
            # a wake-up could not reach a run still holding its lease.
            if wait_is_over(self.store, self.run.id, wake_on):
                self.store.wake_run(self.run.id)
            raise Parked()
        # Looks back often at first, then every half second.
        pause = min(0.5, 0.02 + waited / 2)
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - time.time()))
        time.sleep(pause)

    def consume_event(self, name: str, entry: dict[str, Any]) -> Event | None:
        return self.store.consume_event(self.run.id, name, epoch=self.run.epoch, entry=entry)

    def add_timer(self, name: str, fire_at: float) -> None:
        self.store.add_timer(self.run.id, name, fire_at)

    def child(self, run_id: str) -> RunRecord:
        return self.store.get_run(run_id)

    def start_child(self, child: ChildSpec) -> None:
        create_child(self.store, self.run, child)
        self.spawn(child.run_id)

    def host_call(self, call: HostCall, before_attempt: Callable[[], None]) -> HostCallOutcome:
        cancel: list[bool] = []

        def record_retry(retry: dict[str, Any]) -> None:
            cancel.append(self.append("step_retry", retry).cancel_requested)

        payload, error = execute_host_call(
            call, record_retry=record_retry, before_attempt=before_attempt
        )
        cancel.append(self.append(call.kind, payload).cancel_requested)
        return HostCallOutcome(payload, any(cancel), error)

    def end(self, status: RunStatus, *, output: Any = None, error: Any = None) -> bool:
        return end_run(self.store, self.run, status, output=output, error=error)

    def release(self) -> None:
        with contextlib.suppress(FencedError):
            self.store.update_run(
                self.run.id, self.run.epoch, status=RunStatus.QUEUED, release=True,
                entry=("released", {}),
            )  # fmt: skip


def lineage(store: Store, run: RunRecord) -> set[str]:
    """The run and the runs it was forked from: a fork restored from a snapshot goes on as
    its source did, and a child its source started before the snapshot is its child too."""
    ids = {run.id}
    source = run.forked_from
    while source is not None and source not in ids and len(ids) < 100:
        ids.add(source)
        try:
            source = store.get_run(source).forked_from
        except RunNotFoundError:
            break
    return ids


def create_child(store: Store, parent: RunRecord, child: ChildSpec) -> None:
    """Create the child run unless it exists: a replay after a crash between creating the
    child and recording it finds the same child. An existing run of that id that is no
    child of the parent's `lineage` is refused (as not found)."""
    try:
        found = store.get_run(child.run_id)
    except RunNotFoundError:
        store.create_run(
            child.workflow, road=child.road, input=child.input, queue=child.queue,
            priority=child.priority, parent_id=parent.id, run_id=child.run_id,
            source=child.source,
        )  # fmt: skip
        return
    if found.parent_id not in lineage(store, parent):
        raise RunNotFoundError(child.run_id)


def end_run(
    store: Store, run: RunRecord, status: RunStatus, *, output: Any = None, error: Any = None
) -> bool:
    """Record a run's end under its claim and wake its parent; False if the claim was lost
    first (the new owner finishes it)."""
    summary: dict[str, Any] = {}
    if error is not None:
        summary = {"type": error.get("type"), "message": error.get("message")}
    try:
        store.update_run(
            run.id, run.epoch, status=status, output=output, error=error,
            entry=(status.value, summary),
        )  # fmt: skip
    except RunEndedError as exc:
        log.warning("run %s had already ended (%s): this end was refused", run.id, exc.status)
        return False
    except FencedError:
        log.warning(
            "run %s: lease lost before recording its end; the new owner finishes it", run.id
        )
        return False
    log.info("run %s %s (attempt %d)", run.id, status.value, run.attempt)
    if run.parent_id:
        store.wake_run(run.parent_id)
    return True
