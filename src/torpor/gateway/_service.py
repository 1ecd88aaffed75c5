"""The worker's side of the gateway: each typed operation done against the store, under the
run's claim, for the run of this sandbox only.

The code in a sandbox is untrusted, so the gateway grants it the least it needs:

- it reads and appends its own run's log only (no operation names another run's log);
- it reads its own record and its children's (a fork's: its sources' children too), no other;
- it creates children of itself only, named ``<its id>-<anything>``. The sandbox names the
  workflow and its input; the worker decides the rest: a child of a sandboxed run runs on
  the snapshot road (in a sandbox of its own), from its parent's source, on its parent's
  queue and priority. Road, source, queue and priority sent by the sandbox are ignored: with
  them it could make the worker import a file it wrote, on the host (a replay-road child);
- it starts (spawns) only the children it just created;
- once its run is completed, failed or cancelled, it changes nothing any more;
- host calls (model calls) from it are vetted by the call's `check_sandboxed` (a model call
  goes only to the endpoint the worker is configured with).

What concerns the sandbox's supervision (safe points, long waits, the run's end) is asked of
a `SandboxHost`, which the worker's snapshot road implements; this module knows nothing else
of the worker.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .._errors import (
    FencedError,
    RunNotFoundError,
    RunStateError,
    StoreUnavailableError,
    TorporError,
)
from .._model import Road, RunRecord, RunStatus
from ..engine import (
    ChildSpec,
    HostCall,
    create_child,
    encode_error,
    end_run,
    execute_host_call,
    lineage,
)
from ..log import recorded_since
from ..store import Appended, Store
from ._legacy import from_legacy, is_legacy, legacy_error, legacy_reply
from ._ops import (
    AddTimer,
    Append,
    AppendResult,
    CallHost,
    ConsumeEvent,
    End,
    Exit,
    GatewayRequestError,
    GetChild,
    Hello,
    Op,
    Park,
    Read,
    Safepoint,
    StartChild,
    parse_request,
)

__all__ = ["GatewayService", "Reply", "SandboxHost"]

log = logging.getLogger("torpor.gateway")


@dataclass(frozen=True)
class Reply:
    """A result; ``stop``: the sandbox stops itself once it read it (``after``: and goes
    on; ``retry``: and sends the request again); ``then``: done once the reply is sent."""

    result: Any = None
    stop: str | None = None
    then: Callable[[], None] | None = None


class SandboxHost(Protocol):
    """What the gateway needs of the worker that supervises the sandbox."""

    store: Store
    run: RunRecord
    worker_id: str

    def spawn(self, run_id: str) -> None: ...

    def at_safepoint(self, force: bool, peer: int) -> Reply: ...

    def at_park(self, deadline: float | None, wake_on: dict[str, str], peer: int) -> Reply: ...

    def ended(self) -> None:
        """The run recorded its end."""

    def exited(self, status: str | None) -> None:
        """The runner is done with the run."""

    def lost(self) -> None:
        """Another worker holds the run now."""

    def unreachable(self, exc: StoreUnavailableError) -> None:
        """The store could not be reached: whether a write landed is unknown."""


def _error(exc: BaseException) -> dict[str, Any]:
    """An error for the sandbox: its type, message and fields, not the worker's traceback."""
    encoded = encode_error(exc)
    encoded.pop("traceback", None)
    return encoded


def _appended(appended: Appended) -> dict[str, Any]:
    return {"seq": appended.seq, "cancel_requested": appended.cancel_requested}


class GatewayService:
    """Answers one sandbox's gateway calls (the `GatewayServer`'s handler)."""

    def __init__(self, host: SandboxHost) -> None:
        self.host = host
        self._lineage: set[str] | None = None
        self._handlers: dict[type[Op], Callable[[Any, int], Reply]] = {
            Hello: self._hello,
            Read: self._read,
            Append: self._append,
            AppendResult: self._append_result,
            Safepoint: lambda op, peer: host.at_safepoint(op.force, peer),
            ConsumeEvent: self._consume_event,
            AddTimer: self._add_timer,
            GetChild: self._get_child,
            StartChild: self._start_child,
            CallHost: self._call_host,
            Park: self._park,
            End: self._end,
            Exit: self._exit,
        }
        # Operations that change nothing, answered whatever the run's status.
        self._reading: set[type[Op]] = {Hello, Read, GetChild, Exit}

    @property
    def _store(self) -> Store:
        return self.host.store

    @property
    def _run(self) -> RunRecord:
        return self.host.run

    def handle(
        self, request: dict[str, Any], peer: int
    ) -> tuple[dict[str, Any], Callable[[], None] | None]:
        legacy = is_legacy(request)  # a process restored from a torpor 0.1 snapshot
        errors = legacy_error if legacy else _error
        try:
            op = parse_request(from_legacy(request) if legacy else request)
        except GatewayRequestError as exc:
            log.warning("run %s: %s", self._run.id, exc.message)
            return {"error": errors(exc)}, None
        try:
            ended = None if type(op) in self._reading else self._when_ended(op)
            reply = ended or self._handlers[type(op)](op, peer)
            if legacy:
                named = request.get("run_id")
                child = None
                if request.get("op") in ("get_run", "create_run") and isinstance(named, str):
                    child = self._child(named)
                reply = Reply(legacy_reply(request, reply.result, self._run, child), reply.stop,
                              reply.then)  # fmt: skip
        except FencedError as exc:
            self.host.lost()
            return {"error": errors(exc)}, None
        except StoreUnavailableError as exc:
            self.host.unreachable(exc)
            return {"error": errors(exc)}, None
        except TorporError as exc:
            return {"error": errors(exc)}, None
        wire: dict[str, Any] = {"result": reply.result}
        if reply.stop is not None:
            wire["stop"] = reply.stop
        return wire, reply.then

    def _when_ended(self, op: Op) -> Reply | None:
        """None while the run goes on. A run that is completed, failed or cancelled is
        final: its sandbox (or a copy of it) may still talk, but changes nothing any more;
        the same end sent again (its reply was lost) is answered, not done again."""
        current = self._store.get_run(self._run.id)
        if not current.status.terminal:
            return None
        if isinstance(op, End) and op.status == current.status.value:
            return Reply(True)
        name = type(op).__name__.lower()
        log.warning("run %s: refused a %s from its sandbox: the run is %s", self._run.id, name,
                    current.status.value)  # fmt: skip
        raise RunStateError(self._run.id, current.status.value, f"{name} (it has ended)")

    def _hello(self, op: Hello, peer: int) -> Reply:
        return Reply(
            {
                "run": self._run.to_json(),
                "source": self._run.source,
                "worker": self.host.worker_id,
                "sys_path": [p for p in sys.path if p],
            }
        )

    def _read(self, op: Read, peer: int) -> Reply:
        entries = self._store.read(self._run.id, after=op.after, limit=op.limit)
        return Reply([e.to_json() for e in entries])

    def _append(self, op: Append, peer: int) -> Reply:
        run = self._run
        return Reply(
            _appended(self._store.append_owned(run.id, op.kind, op.payload, epoch=run.epoch))
        )

    def _append_result(self, op: AppendResult, peer: int) -> Reply:
        tail = self._store.read(self._run.id, after=op.after)
        found = recorded_since(tail, op.kind, op.payload.get("pos"))
        if found is not None:
            return Reply({"seq": found.seq, "cancel_requested": False})
        return self._append(Append(kind=op.kind, payload=op.payload), peer)

    def _consume_event(self, op: ConsumeEvent, peer: int) -> Reply:
        run = self._run
        event = self._store.consume_event(run.id, op.name, epoch=run.epoch, entry=op.entry)
        if event is None:
            return Reply(None)
        return Reply(
            {"id": event.id, "payload": event.payload, "created_at": event.created_at,
             "consumed_seq": event.consumed_seq}
        )  # fmt: skip

    def _add_timer(self, op: AddTimer, peer: int) -> Reply:
        timer = self._store.add_timer(self._run.id, op.name, op.fire_at)
        return Reply({"id": timer.id})

    def _lineage_ids(self) -> set[str]:
        if self._lineage is None:
            self._lineage = lineage(self._store, self._run)
        return self._lineage

    def _child(self, run_id: str) -> RunRecord:
        """This run, or a child of it (or of a run it was forked from): a sandbox sees no
        other (another run is "not found", whether it exists or not)."""
        record = self._store.get_run(run_id)
        if run_id != self._run.id and record.parent_id not in self._lineage_ids():
            raise RunNotFoundError(run_id)
        return record

    def _get_child(self, op: GetChild, peer: int) -> Reply:
        return Reply(self._child(op.run_id).to_json())

    def _start_child(self, op: StartChild, peer: int) -> Reply:
        """Create a child of this run and start it. The sandbox chose the id, workflow and
        input only: the child runs on the snapshot road, from this run's source, queue and
        priority (see the module's docstring)."""
        if not any(op.run_id.startswith(f"{own}-") for own in self._lineage_ids()):
            raise TorporError(
                f"a child of run {self._run.id} is named {self._run.id}-<suffix>, not {op.run_id!r}"
            )
        run = self._run
        spec = ChildSpec(
            op.run_id, op.workflow, Road.SNAPSHOT, op.input, run.queue, run.priority,
            dict(run.source or {}),
        )  # fmt: skip
        create_child(self._store, run, spec)
        self.host.spawn(op.run_id)
        return Reply(None)

    def _call_host(self, op: CallHost, peer: int) -> Reply:
        """A model call for the sandbox, made here with the worker's keys and recorded."""
        run = self._run
        answered = recorded_since(self._store.read(run.id, after=op.after), op.kind, op.pos)
        if answered is not None:
            return Reply({"payload": answered.payload, "cancel_requested": False})
        cancel: list[bool] = []

        def record(kind: str, payload: dict[str, Any]) -> None:
            appended = self._store.append_owned(run.id, kind, payload, epoch=run.epoch)
            cancel.append(appended.cancel_requested)

        call = HostCall(**op.model_dump(exclude={"op"}))
        payload, _ = execute_host_call(
            call, record_retry=lambda retry: record("step_retry", retry), sandboxed=True
        )
        record(op.kind, payload)
        return Reply({"payload": payload, "cancel_requested": any(cancel)})

    def _park(self, op: Park, peer: int) -> Reply:
        if "child" in op.wake_on:
            self._child(op.wake_on["child"])  # a sandbox waits only for its own children
        return self.host.at_park(op.deadline, op.wake_on, peer)

    def _end(self, op: End, peer: int) -> Reply:
        if not end_run(self._store, self._run, RunStatus(op.status), output=op.output,
                       error=op.error):  # fmt: skip
            self.host.lost()
            return Reply(False)
        self.host.ended()
        return Reply(True)

    def _exit(self, op: Exit, peer: int) -> Reply:
        self.host.exited(op.status)
        return Reply(None)
