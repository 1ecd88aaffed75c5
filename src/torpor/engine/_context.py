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
from ..log import Timeline, describe_call
from ._codec import decode_error
from ._journal import HostCall, Journal

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


# Entries that record a call's result: recorded at a safe point, and once.
_RESULT_KINDS = ("step", "tool_result")

_current: contextvars.ContextVar[WorkflowContext | None] = contextvars.ContextVar(
    "torpor_workflow", default=None
)
in_step: contextvars.ContextVar[bool] = contextvars.ContextVar("torpor_in_step", default=False)
step_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("torpor_step", default=None)


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
    """One execution (attempt) of a run by one worker, over its `Journal`."""

    journal: Journal
    worker_id: str
    stopping: threading.Event
    history: Timeline = field(default_factory=Timeline)
    position: int = 0
    cancel_requested: bool = False
    fenced: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(
        cls, journal: Journal, *, worker_id: str, stopping: threading.Event
    ) -> WorkflowContext:
        ctx = cls(
            journal=journal,
            worker_id=worker_id,
            stopping=stopping,
            cancel_requested=journal.run.cancel_requested,
        )
        ctx.history.absorb(journal.read())
        return ctx

    @property
    def run(self) -> RunRecord:
        return self.journal.run

    @property
    def at(self) -> dict[int, list[LogEntry]]:
        return self.history.at

    @property
    def warned(self) -> set[int]:
        return self.history.warned

    @property
    def timeline(self) -> int:
        """Rollbacks seen (`resume --from`): a timeline's child runs are its own."""
        return self.history.rollbacks

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

        Raises `NondeterminismError` if a different call was recorded at ``pos`` — unless
        the journal lags (a restored process): then the difference is recorded as a
        divergence and the call executes afresh.
        """
        if pos not in self.at and self.journal.lagging:
            self.history.absorb(self.journal.read(after=self.history.last_seq))
        for entry in self.at.get(pos, ()):
            recorded = describe_call(entry)
            if recorded == called:
                continue
            if not self.journal.lagging:
                raise NondeterminismError(self.run.id, pos, recorded, called)
            self.record(
                "divergence",
                {"at": pos, "recorded": recorded, "called": called,
                 "message": f"position {pos}: recorded `{recorded}`, now `{called}`; "
                 "executed afresh"},
            )  # fmt: skip
            self.at.pop(pos, None)
            return None
        return self.history.answer(pos, kinds)

    def opened(self, pos: int, kind: str) -> LogEntry | None:
        """The ``wait``/``sleep`` entry that began the call at ``pos`` in an earlier attempt."""
        for entry in self.at.get(pos, ()):
            if entry.kind == kind:
                return entry
        return None

    @contextmanager
    def owned_write(self) -> Iterator[None]:
        """A write under this execution's claim: a lost claim or store ends the attempt."""
        try:
            yield
        except FencedError:
            self.fenced = True
            raise Stopped() from None
        except StoreUnavailableError as exc:
            raise Unreachable(exc.reason) from None

    def record(self, kind: str, payload: dict[str, Any]) -> int:
        """Append to the run's log under this execution's claim. A call's result is
        recorded at a safe point, and once (see `Journal.append_result`)."""
        pos = payload.get("pos")
        with self.owned_write():
            if kind in _RESULT_KINDS and isinstance(pos, int):
                # With the `step` checkpoint policy the snapshot is taken here, after the
                # step's body and before its result is recorded, so the workspace and the
                # log agree whatever the moment of a crash.
                self.journal.safepoint(force=False)
                appended = self.journal.append_result(kind, payload, after=self.history.last_seq)
            else:
                appended = self.journal.append(kind, payload)
        if appended.cancel_requested:
            self.cancel_requested = True
        return appended.seq

    def host_step(
        self,
        call: str,
        request: dict[str, Any],
        *,
        name: str,
        kind: str,
        retries: int,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ) -> Any:
        """A call executed and recorded on the host (a model call), at the next position;
        its result, or its recorded error raised."""
        pos = self.next_position()
        entry = self.recorded(pos, (kind,), name)
        if entry is None:
            self.boundary()
            spec = HostCall(
                pos=pos, name=name, kind=kind, call=call, request=request, retries=retries,
                backoff=backoff, max_backoff=max_backoff, after=self.history.last_seq,
            )  # fmt: skip
            with self.owned_write():
                outcome = self.journal.host_call(spec, before_attempt=self.boundary)
            self.cancel_requested = self.cancel_requested or outcome.cancel_requested
            if outcome.error is not None:
                raise outcome.error
            payload = outcome.payload
        else:
            payload = entry.payload
        if "error" in payload:
            raise decode_error(payload["error"])
        return payload.get("result")

    def safepoint(self, *, force: bool = False) -> None:
        """Where a snapshot may be taken (`torpor.checkpoint()`); nothing to do on the
        replay road, whose journal is its whole state."""
        with self.owned_write():
            self.journal.safepoint(force=force)

    def boundary(self) -> None:
        """A step boundary: where cancellation, shutdown and a lost lease take effect."""
        if self.fenced:
            raise Stopped()
        if self.cancel_requested:
            raise Cancelled()
        if self.stopping.is_set():
            raise Released()

    def block(
        self,
        poll: Callable[[], tuple[bool, Any]],
        deadline: float | None,
        wake_on: dict[str, str] | None = None,
    ) -> tuple[bool, Any]:
        """Wait until ``poll`` says done or ``deadline`` passes.

        Returns ``poll``'s value, or ``(False, None)`` at the deadline. The journal decides
        how to wait: here, or by releasing the run (`Parked`) until ``wake_on`` (an event,
        a child's end) or the deadline wakes it.
        """
        done, value = poll()
        if done:
            return done, value
        with self.owned_write():
            self.journal.set_status(RunStatus.WAITING)
        started = time.monotonic()
        while not done:
            if deadline is not None and time.time() >= deadline:
                break
            self.boundary()
            with self.owned_write():
                self.journal.hold(deadline, wake_on or {}, time.monotonic() - started)
            done, value = poll()
        with self.owned_write():
            self.journal.set_status(RunStatus.RUNNING)
        return done, value
