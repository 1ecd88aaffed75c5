"""Replay a recorded run log against today's workflow code, in memory: the check that a
change to a workflow still replays the runs already in flight (as Temporal's `Replayer`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._errors import RunFailedError, TorporError
from .._model import Event, LogEntry, Road, RunRecord, RunStatus
from ..engine import (
    ChildSpec,
    HostCall,
    HostCallOutcome,
    Parked,
    decode_error,
    encode_input,
    execute_run,
    lookup_workflow,
    workflow_def,
)
from ..store import Appended

__all__ = ["Replayed", "UnrecordedCallError", "replay"]


class UnrecordedCallError(TorporError):
    """The replayed workflow made a call its log has no answer for."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"the replayed workflow {what}, which the log does not record; a replay only "
            "answers recorded calls (the log ends before this point, or the code changed)"
        )
        self.what = what


@dataclass
class Replayed:
    """What a replay did: the run's ``status`` and ``output`` (or ``error``), and the
    entries it would have appended (warnings, divergences, its end)."""

    status: RunStatus
    output: Any
    error: dict[str, Any] | None
    appended: list[LogEntry]

    def result(self) -> Any:
        """The output, or the run's error raised (`NondeterminismError` for changed code)."""
        if self.status is RunStatus.COMPLETED:
            return self.output
        if self.error is not None:
            raise decode_error(self.error)
        raise RunFailedError("replay", self.error)


@dataclass
class _MemoryJournal:
    """A `Journal` over a log in memory that answers what is recorded, and nothing else:
    step bodies recorded in it never run, and a call it cannot answer ends the replay."""

    run: RunRecord
    entries: list[LogEntry]
    appended: list[LogEntry] = field(default_factory=list)
    lagging: bool = False
    workspace: Path = Path("/nonexistent/torpor-replay")
    ended: tuple[RunStatus, Any, Any] | None = None

    def read(self, after: int = 0) -> list[LogEntry]:
        return [e for e in self.entries if e.seq > after]

    def append(self, kind: str, payload: Any) -> Appended:
        entry = LogEntry(self.run.id, len(self.entries) + 1, kind, payload, time.time())
        self.entries.append(entry)
        self.appended.append(entry)
        return Appended(entry.seq, False)

    def append_result(self, kind: str, payload: dict[str, Any], *, after: int) -> Appended:
        raise UnrecordedCallError(
            f"executed `{payload.get('name')}` at position {payload.get('pos')}"
        )

    def safepoint(self, *, force: bool) -> None:
        pass

    def set_status(self, status: RunStatus) -> None:
        pass

    def hold(self, deadline: float | None, wake_on: dict[str, str], waited: float) -> None:
        raise Parked()  # a wait the log does not resolve: the replay ends there

    def consume_event(self, name: str, entry: dict[str, Any]) -> Event | None:
        return None

    def add_timer(self, name: str, fire_at: float) -> None:
        pass

    def child(self, run_id: str) -> RunRecord:
        raise UnrecordedCallError(f"looked up child run {run_id}")

    def start_child(self, child: ChildSpec) -> None:
        raise UnrecordedCallError(f"started a child run of {child.workflow}")

    def host_call(self, call: HostCall, before_attempt: Callable[[], None]) -> HostCallOutcome:
        raise UnrecordedCallError(f"made host call `{call.name}` at position {call.pos}")

    def end(self, status: RunStatus, *, output: Any = None, error: Any = None) -> bool:
        self.ended = (status, output, error)
        return True

    def release(self) -> None:
        pass


def _entry(run_id: str, seq: int, raw: LogEntry | Mapping[str, Any]) -> LogEntry:
    if isinstance(raw, LogEntry):
        return LogEntry(run_id, seq, raw.kind, raw.payload, raw.created_at)
    return LogEntry(run_id, seq, str(raw["kind"]), raw.get("payload"), 0.0)


def replay(
    workflow: Callable[..., Any] | str,
    log: Iterable[LogEntry | Mapping[str, Any]],
    *args: Any,
    **kwargs: Any,
) -> Replayed:
    """Run ``workflow(*args, **kwargs)`` against a recorded ``log`` (`LogEntry` objects,
    or ``{"kind", "payload"}`` mappings as `torpor log --json` prints them), in memory.

    Recorded calls return their recorded results; no step body runs. Entries that record
    the run's end (``completed``, ``failed``, ``cancelled``) are ignored: the replay
    decides the end itself. A workflow whose calls differ from the log ends `failed` with
    `NondeterminismError`; one that makes a call the log does not answer, with
    `UnrecordedCallError`. A wait the log does not resolve leaves the run ``waiting``.

    Example:
        >>> replayed = torpor.testing.replay(order, golden["log"], "book", 1299)
        >>> assert replayed.result() == golden["output"]
    """
    if isinstance(workflow, str):
        definition = lookup_workflow(workflow)
    else:
        found = workflow_def(workflow)
        if found is None:
            raise TorporError(f"{workflow!r} is not a @torpor.workflow")
        definition = found
    now = time.time()
    run = RunRecord(
        id="replay", workflow=definition.name, road=Road.REPLAY, status=RunStatus.RUNNING,
        input=encode_input(args, kwargs), output=None, error=None, attempt=1,
        queue="default", priority=0, parent_id=None, forked_from=None, created_at=now,
        updated_at=now, lease_owner="replay", lease_expires_at=None, epoch=1, last_seq=0,
        cancel_requested=False, wake_at=None, source=definition.source,
    )  # fmt: skip
    recorded = [
        raw for raw in log
        if (raw.kind if isinstance(raw, LogEntry) else raw["kind"])
        not in ("completed", "failed", "cancelled")
    ]  # fmt: skip
    journal = _MemoryJournal(run, [_entry(run.id, i, e) for i, e in enumerate(recorded, 1)])
    execute_run(journal, worker_id="replay", stopping=threading.Event())
    if journal.ended is None:
        return Replayed(RunStatus.WAITING, None, None, journal.appended)
    status, output, error = journal.ended
    return Replayed(status, output, error, journal.appended)
