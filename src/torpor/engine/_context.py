"""The state of one workflow execution: its journal, its call positions, its lease."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .._errors import FencedError, NondeterminismError, StoreUnavailableError, TorporError
from .._model import LogEntry, RunRecord, RunStatus
from ..store import Store

__all__ = [
    "Cancelled",
    "Interrupt",
    "Parked",
    "Released",
    "Stopped",
    "Unreachable",
    "WorkflowContext",
    "current",
    "in_step",
    "require",
    "step_key",
]


class Interrupt(BaseException):
    """Unwinds a workflow for the engine; a BaseException so ``except Exception`` in user
    code does not swallow it."""


class Cancelled(Interrupt):
    """The run was cancelled; it ends `cancelled` at this step boundary."""


class Parked(Interrupt):
    """The run waits for long: its lease is released and the thread goes back to the pool."""


class Released(Interrupt):
    """The worker is stopping: the run goes back to the queue at this step boundary."""


class Stopped(Interrupt):
    """The lease was lost (another worker owns the run): stop without writing."""


class Unreachable(Interrupt):
    """The store could not be reached, so whether the last write landed is unknown: stop
    this attempt; the run is claimed again when its lease expires and replays its log."""


_current: contextvars.ContextVar[WorkflowContext | None] = contextvars.ContextVar(
    "torpor_workflow", default=None
)
in_step: contextvars.ContextVar[bool] = contextvars.ContextVar("torpor_in_step", default=False)
step_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("torpor_step", default=None)

# Entries that answer a call at a position; `wait` and `sleep` open a wait that a later entry
# (or the clock) resolves.
_DESCRIBE: dict[str, Callable[[dict[str, Any]], str]] = {
    "step": lambda p: str(p.get("name")),
    "model_call": lambda p: str(p.get("name")),
    "tool_result": lambda p: str(p.get("name")),
    "user": lambda p: str(p.get("name")),
    "value": lambda p: f"torpor.{p.get('name')}()",
    "patch": lambda p: f"torpor.patched({p.get('change')!r})",
    "wait": lambda p: f"torpor.wait_for_event({p.get('name')!r})",
    "event": lambda p: f"torpor.wait_for_event({p.get('name')!r})",
    "timeout": lambda p: f"torpor.wait_for_event({p.get('name')!r})",
    "sleep": lambda _: "torpor.sleep()",
    "child": lambda p: f"torpor.start({p.get('workflow')})",
    "child_result": lambda p: f"result of child run {p.get('child')}",
}


def current() -> WorkflowContext | None:
    """The workflow execution this code runs in, if any."""
    return _current.get()


def require(what: str) -> WorkflowContext:
    ctx = _current.get()
    if ctx is None:
        raise TorporError(f"{what} can only be called inside a @torpor.workflow")
    return ctx


@dataclass
class WorkflowContext:
    """One execution (attempt) of a run by one worker."""

    store: Store
    run: RunRecord
    worker_id: str
    park_after: float | None
    stopping: threading.Event
    spawn: Callable[[str], None]
    at: dict[int, list[LogEntry]] = field(default_factory=dict)
    position: int = 0
    cancel_requested: bool = False
    fenced: bool = False
    warned: set[int] = field(default_factory=set)
    # Rollbacks seen (`resume --from`): a timeline's child runs are its own.
    timeline: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, store: Store, run: RunRecord, **kwargs: Any) -> WorkflowContext:
        ctx = cls(store=store, run=run, cancel_requested=run.cancel_requested, **kwargs)
        for entry in store.read(run.id):
            pos = entry.payload.get("pos") if isinstance(entry.payload, dict) else None
            if isinstance(pos, int) and entry.kind in _DESCRIBE:
                ctx.at.setdefault(pos, []).append(entry)
            elif entry.kind == "warning" and isinstance(entry.payload.get("at"), int):
                ctx.warned.add(entry.payload["at"])  # said once per position, not per replay
            elif entry.kind == "resumed" and isinstance(entry.payload.get("retry"), int):
                # The step error that ended the run is forgotten: the step runs again.
                retry = entry.payload["retry"]
                ctx.at[retry] = [e for e in ctx.at.get(retry, []) if "error" not in e.payload]
        return ctx

    def activate(self) -> contextvars.Token[WorkflowContext | None]:
        return _current.set(self)

    @staticmethod
    def deactivate(token: contextvars.Token[WorkflowContext | None]) -> None:
        _current.reset(token)

    def next_position(self) -> int:
        with self._lock:
            self.position += 1
            return self.position

    def recorded(self, pos: int, kinds: tuple[str, ...], called: str) -> LogEntry | None:
        """The entry answering the call at ``pos``, None if the call is new there.

        Raises `NondeterminismError` if a different call was recorded at ``pos``.
        """
        entries = self.at.get(pos)
        if not entries:
            return None
        for entry in entries:
            recorded = _DESCRIBE[entry.kind](entry.payload)
            if recorded != called:
                raise NondeterminismError(self.run.id, pos, recorded, called)
        for entry in reversed(entries):
            if entry.kind in kinds:
                return entry
        return None

    def opened(self, pos: int, kind: str) -> LogEntry | None:
        """The ``wait``/``sleep`` entry that began the call at ``pos`` in an earlier attempt."""
        for entry in self.at.get(pos, ()):
            if entry.kind == kind:
                return entry
        return None

    @contextmanager
    def _owned_write(self) -> Iterator[None]:
        """A write under this execution's lease: a lost lease or store ends the attempt."""
        try:
            yield
        except FencedError:
            self.fenced = True
            raise Stopped() from None
        except StoreUnavailableError as exc:
            raise Unreachable(exc.reason) from None

    def record(self, kind: str, payload: dict[str, Any]) -> int:
        """Append to the run's log under this execution's lease."""
        with self._owned_write():
            appended = self.store.append_owned(self.run.id, kind, payload, epoch=self.run.epoch)
        if appended.cancel_requested:
            self.cancel_requested = True
        return appended.seq

    def safepoint(self, *, force: bool = False) -> None:
        """Where a snapshot may be taken (`torpor.checkpoint()`): nothing to do on the
        replay road, whose journal is its whole state."""

    def boundary(self) -> None:
        """A step boundary: where cancellation, shutdown and a lost lease take effect."""
        if self.fenced:
            raise Stopped()
        if self.cancel_requested:
            raise Cancelled()
        if self.stopping.is_set():
            raise Released()

    def set_status(self, status: RunStatus, *, release: bool = False) -> None:
        with self._owned_write():
            self.store.update_run(self.run.id, self.run.epoch, status=status, release=release)

    def block(
        self,
        poll: Callable[[], tuple[bool, Any]],
        deadline: float | None,
        ready: Callable[[], bool],
        wake_on: dict[str, str] | None = None,
    ) -> tuple[bool, Any]:
        """Wait in this process until ``poll`` says done or ``deadline`` passes.

        Returns ``poll``'s value, or ``(False, None)`` at the deadline. Waits longer than
        ``park_after`` release the run by raising `Parked`: it is claimed again at the
        deadline, or earlier when what it waits for happens (``ready()``).
        """
        done, value = poll()
        if done:
            return done, value
        self.set_status(RunStatus.WAITING)
        started = time.monotonic()
        delay = 0.02
        while True:
            now = time.time()
            if deadline is not None and now >= deadline:
                break
            self.boundary()
            if self.park_after is not None and time.monotonic() - started >= self.park_after:
                self.park(deadline, ready)
            step = delay if deadline is None else min(delay, max(0.0, deadline - now))
            time.sleep(step)
            delay = min(delay * 1.5, 0.5)
            done, value = poll()
            if done:
                break
        self.set_status(RunStatus.RUNNING)
        return done, value

    def park(self, wake_at: float | None, ready: Callable[[], bool]) -> None:
        """Release the run until ``wake_at`` or until something wakes it; the thread unwinds."""
        with self._owned_write():
            self.store.update_run(
                self.run.id, self.run.epoch, status=RunStatus.WAITING, wake_at=wake_at, release=True
            )
        # What it waits for may have come between the last poll and the release, when a
        # wake-up could not reach a run still holding its lease.
        if ready():
            self.store.wake_run(self.run.id)
        raise Parked()
