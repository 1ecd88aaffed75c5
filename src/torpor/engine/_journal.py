"""The seam between the engine and the two roads: what one execution of a workflow needs
from durable storage, and the calls that run on the host whatever the road.

Two implementations: `StoreJournal` (the worker's store, on the replay road) and the
gateway's journal inside a snapshot-road sandbox, which asks the worker for each of these.
The engine talks to a `Journal` only; it never asks which road it is on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .._errors import TorporError
from .._model import Event, LogEntry, Road, RunRecord, RunStatus
from ..store import Appended

__all__ = [
    "ChildSpec",
    "HostCall",
    "HostCallDef",
    "HostCallOutcome",
    "Journal",
    "lookup_host_call",
    "register_host_call",
]


@dataclass(frozen=True)
class ChildSpec:
    """A child run to create (if it is not there yet) and start."""

    run_id: str
    workflow: str
    road: Road
    input: dict[str, Any]
    queue: str
    priority: int
    source: dict[str, str]


@dataclass(frozen=True)
class HostCall:
    """A call at a position that executes on the host, with the host's credentials, and
    is recorded there (a model call: on the snapshot road, API keys never enter the
    sandbox). ``after``: the seq this execution has read up to; an answer recorded past it
    (a reply lost in transit, a restored copy calling again) is returned, not paid twice."""

    pos: int
    name: str  # as recorded: what a replay compares
    kind: str  # the log entry kind of the result
    call: str  # the registered host call
    request: dict[str, Any]
    retries: int
    backoff: float
    max_backoff: float
    after: int = 0


@dataclass(frozen=True)
class HostCallOutcome:
    """What a host call recorded (``payload``: its ``result`` or ``error``), whether the run
    was asked to cancel meanwhile, and, when it ran in this very process, the exception it
    raised (raised again as itself, not as the recorded copy)."""

    payload: dict[str, Any]
    cancel_requested: bool = False
    error: BaseException | None = None


@dataclass(frozen=True)
class HostCallDef:
    name: str
    fn: Callable[[dict[str, Any]], Any]
    # Errors not worth retrying (bad requests, auth); asked for when a call fails.
    non_retryable: Callable[[], tuple[type[BaseException], ...]] = field(default=lambda: ())
    # Checks a request that came out of a sandbox (hostile input) before ``fn`` gets it;
    # raises to refuse it. None: the request goes to ``fn`` as it is.
    check_sandboxed: Callable[[dict[str, Any]], None] | None = None


_host_calls: dict[str, HostCallDef] = {}
_host_lock = threading.Lock()


def register_host_call(
    name: str,
    fn: Callable[[dict[str, Any]], Any],
    non_retryable: Callable[[], tuple[type[BaseException], ...]] = lambda: (),
    check_sandboxed: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Make ``fn(request) -> JSON result`` callable from workflows as host call ``name``.

    ``check_sandboxed(request)``: raises to refuse a request sent by a snapshot-road sandbox
    (whose code is untrusted) that the worker would do for trusted code, e.g. a model call to
    an endpoint of the sandbox's choosing, with the worker's key. Its error is the call's.
    """
    with _host_lock:
        _host_calls[name] = HostCallDef(name, fn, non_retryable, check_sandboxed)


def lookup_host_call(name: str) -> HostCallDef:
    found = _host_calls.get(name)
    if found is None:
        known = ", ".join(sorted(_host_calls)) or "none"
        raise TorporError(f"no host call {name!r} is registered in this worker (known: {known})")
    return found


class Journal(Protocol):
    """What one execution of a run needs from durable storage, under its claim.

    Writes are fenced: a lost claim raises `FencedError`, an unreachable store
    `StoreUnavailableError`; the engine stops the execution on either.
    """

    run: RunRecord
    # Entries this execution has not read may exist: it may be a process restored from a
    # snapshot, whose memory holds the journal as it was then. The engine then reads the
    # log's tail before taking a call as new, and a call that differs from the recorded one
    # is a divergence to record (the code is the same; the world changed), not an error.
    lagging: bool
    # The directory the run's files live in (its tools work there).
    workspace: Path

    def read(self, after: int = 0) -> list[LogEntry]: ...

    def append(self, kind: str, payload: Any) -> Appended: ...

    def append_result(self, kind: str, payload: dict[str, Any], *, after: int) -> Appended:
        """A call's result, at a safe point: unless one of ``kind`` at its position was
        recorded past ``after`` (then that entry's seq), it is appended."""
        ...

    def safepoint(self, *, force: bool) -> None:
        """Where a snapshot may be taken: by policy, or always with ``force``."""
        ...

    def set_status(self, status: RunStatus) -> None:
        """``waiting`` while the execution blocks in a short wait, ``running`` after."""
        ...

    def hold(self, deadline: float | None, wake_on: dict[str, str], waited: float) -> None:
        """Block a while in a wait that began ``waited`` seconds ago, until something may
        have changed. May raise `Parked` (the run is released until it is woken)."""
        ...

    def consume_event(self, name: str, entry: dict[str, Any]) -> Event | None: ...

    def add_timer(self, name: str, fire_at: float) -> None: ...

    def child(self, run_id: str) -> RunRecord:
        """A child run of this run."""
        ...

    def start_child(self, child: ChildSpec) -> None: ...

    def host_call(self, call: HostCall, before_attempt: Callable[[], None]) -> HostCallOutcome:
        """Execute ``call`` on the host with its retries and record its outcome."""
        ...

    def end(self, status: RunStatus, *, output: Any = None, error: Any = None) -> bool:
        """Record the run's end; False if the claim was lost first."""
        ...

    def release(self) -> None:
        """Give the run back to the queue (the worker stops)."""
        ...
