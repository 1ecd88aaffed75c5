"""The sandbox's side of the gateway: a `Store` look-alike that forwards to the worker, and
the workflow context that uses it.

Every call opens a connection, sends one request, reads one reply and closes. When the
worker answers ``stop``, the process stops itself (SIGSTOP) with no connection open; the
worker then checkpoints it and continues it — on this machine or, after a suspend or a
crash, as a restored copy anywhere. ``stop: "retry"`` means: once continued, send the same
request again (the answer may now be different, e.g. the awaited event came).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

from .._errors import FencedError, NondeterminismError, TorporError
from .._model import Event, LogEntry, Road, RunRecord, RunStatus, Timer
from ..engine._context import WorkflowContext
from ..store._base import Appended
from ._protocol import read_message, write_message

__all__ = [
    "GatewayClient",
    "GatewayStore",
    "SandboxedContext",
    "record_from_wire",
    "record_to_wire",
]

_CONNECT_PATIENCE_S = 120.0
# Results recorded after a safe point (see `SandboxedContext.record`).
_SAFE_POINT_KINDS = ("step", "tool_result")


def record_to_wire(record: RunRecord) -> dict[str, Any]:
    data = asdict(record)
    data["road"] = record.road.value
    data["status"] = record.status.value
    return data


def record_from_wire(data: dict[str, Any]) -> RunRecord:
    return RunRecord(**{**data, "road": Road(data["road"]), "status": RunStatus(data["status"])})


def _entry_from_wire(data: dict[str, Any], run_id: str) -> LogEntry:
    return LogEntry(run_id, int(data["seq"]), data["kind"], data["payload"], data["created_at"])


class GatewayClient:
    """Calls the worker through the gateway socket."""

    def __init__(self, path: str) -> None:
        self.path = path

    def call(self, op: str, **fields: Any) -> Any:
        request = {"op": op, **fields}
        while True:
            reply = self._exchange(request)
            stop = reply.get("stop")
            if stop:
                # No connection is open now: safe to be dumped while stopped.
                os.kill(os.getpid(), signal.SIGSTOP)
                if stop == "retry":
                    continue
            if "error" in reply:
                raise _decode_error(reply["error"])
            return reply.get("result")

    def _exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + _CONNECT_PATIENCE_S
        delay = 0.005
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.path)
                write_message(sock, request)
                return read_message(sock)
            except OSError as exc:
                # The worker re-creates its socket after a checkpoint or restore; a
                # connection cut mid-call (the worker died) is retried against the next one.
                retryable = isinstance(exc, ConnectionError) or exc.errno in (
                    errno.ENOENT,
                    errno.ECONNREFUSED,
                )
                if not retryable or time.monotonic() > deadline:
                    raise TorporError(f"the gateway at {self.path} is unreachable: {exc}") from None
            finally:
                sock.close()
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def _decode_error(error: dict[str, Any]) -> BaseException:
    kind = error.get("type")
    if kind == "FencedError":
        return FencedError(error.get("run_id", ""), error.get("epoch", 0), error.get("current", 0))
    return TorporError(str(error.get("message", "gateway error")))


class GatewayStore:
    """The part of `Store` a workflow context uses, answered by the worker."""

    def __init__(self, client: GatewayClient) -> None:
        self.client = client
        self.url = "gateway"

    def read(self, run_id: str, after: int = 0, limit: int | None = None) -> list[LogEntry]:
        rows = self.client.call("read", after=after, limit=limit)
        return [_entry_from_wire(r, run_id) for r in rows]

    def append_owned(
        self,
        run_id: str,
        kind: str,
        payload: Any,
        *,
        expected_seq: int | None = None,
        epoch: int | None = None,
    ) -> Appended:
        result = self.client.call("append", kind=kind, payload=payload, expected_seq=expected_seq)
        return Appended(int(result["seq"]), bool(result["cancel_requested"]))

    def append_once(self, kind: str, payload: dict[str, Any], *, after: int) -> Appended:
        """Append a call's result unless one of this kind at its position was recorded
        after seq ``after`` (then that entry's seq)."""
        result = self.client.call("append", kind=kind, payload=payload, once_after=after)
        return Appended(int(result["seq"]), bool(result["cancel_requested"]))

    def append(self, run_id: str, kind: str, payload: Any, **kwargs: Any) -> int:
        return self.append_owned(run_id, kind, payload, **kwargs).seq

    def consume_event(
        self, run_id: str, name: str, *, epoch: int, entry: dict[str, Any]
    ) -> Event | None:
        result = self.client.call("consume_event", name=name, entry=entry)
        if result is None:
            return None
        return Event(
            result["id"],
            run_id,
            name,
            result["payload"],
            result["created_at"],
            result["consumed_seq"],
        )

    def update_run(self, run_id: str, epoch: int, **fields: Any) -> RunRecord:
        status = fields.get("status")
        if status is not None:
            fields["status"] = RunStatus(status).value
        return record_from_wire(self.client.call("update_run", run_id=run_id, **fields))

    def get_run(self, run_id: str) -> RunRecord:
        return record_from_wire(self.client.call("get_run", run_id=run_id))

    def create_run(self, workflow: str, **fields: Any) -> RunRecord:
        if "road" in fields:
            fields["road"] = Road(fields["road"]).value
        return record_from_wire(self.client.call("create_run", workflow=workflow, **fields))

    def add_timer(self, run_id: str, name: str, fire_at: float) -> Timer:
        result = self.client.call("add_timer", name=name, fire_at=fire_at)
        return Timer(int(result["id"]), run_id, name, fire_at, False)

    def list_events(self, run_id: str) -> list[Event]:
        return []  # waits are decided by the worker (see SandboxedContext.block)

    def wake_run(self, run_id: str) -> None:
        pass


@dataclass
class SandboxedContext(WorkflowContext):
    """A workflow context inside a sandbox: the journal is the worker's log, read as needed.

    After a restore the process's memory holds the journal as it was at the snapshot; the
    calls it makes again are answered from the log's newer entries (the log-tail replay).
    A call that differs from the one recorded at its position is recorded as a divergence
    and executed afresh, instead of failing the run as the replay road does: the process
    is the one that ran before, so a difference is environmental, not a code change.
    """

    last_seq: int = 0

    @classmethod
    def load(cls, store: Any, run: RunRecord, **kwargs: Any) -> SandboxedContext:
        ctx = cls(store=store, run=run, cancel_requested=run.cancel_requested, **kwargs)
        ctx._refresh()
        return ctx

    def _refresh(self) -> None:
        for entry in self.store.read(self.run.id, after=self.last_seq):
            self.last_seq = entry.seq
            payload = entry.payload if isinstance(entry.payload, dict) else {}
            pos = payload.get("pos")
            if isinstance(pos, int):
                self.at.setdefault(pos, []).append(entry)
            elif entry.kind == "divergence" and isinstance(payload.get("at"), int):
                self.at.pop(payload["at"], None)  # what follows at that position replaces it
            elif entry.kind == "warning" and isinstance(payload.get("at"), int):
                self.warned.add(payload["at"])
            elif entry.kind == "rollback" and isinstance(payload.get("to_seq"), int):
                self._forget_after(payload["to_seq"])
                self.timeline += 1

    def _forget_after(self, seq: int) -> None:
        """`torpor resume --from SNAPSHOT`: what the run recorded after the snapshot is
        history, no longer answers; the calls made from there on execute afresh."""
        for pos in list(self.at):
            kept = [e for e in self.at[pos] if e.seq <= seq]
            if kept:
                self.at[pos] = kept
            else:
                del self.at[pos]

    def record(self, kind: str, payload: dict[str, Any]) -> int:
        pos = payload.get("pos")
        if kind not in _SAFE_POINT_KINDS or not isinstance(pos, int):
            return super().record(kind, payload)
        # With the `step` checkpoint policy the snapshot is taken here, after the step's
        # body and before its result is recorded, so the workspace and the log agree
        # whatever the moment of a crash.
        self.client.call("safepoint", pos=pos)
        # A copy restored from a snapshot taken after the body (this safe point, or any
        # checkpoint before the record below) comes back here with the result possibly
        # recorded already: the worker records it once, looking past what this process
        # has read.
        store = self.store
        assert isinstance(store, GatewayStore)
        with self._owned_write():
            appended = store.append_once(kind, payload, after=self.last_seq)
        if appended.cancel_requested:
            self.cancel_requested = True
        return appended.seq

    def safepoint(self, *, force: bool = False) -> None:
        self.client.call("safepoint", force=force)

    def recorded(self, pos: int, kinds: tuple[str, ...], called: str) -> LogEntry | None:
        if pos not in self.at:
            self._refresh()
        try:
            return super().recorded(pos, kinds, called)
        except NondeterminismError as exc:
            self.record(
                "divergence",
                {
                    "at": pos,
                    "recorded": exc.recorded,
                    "called": exc.called,
                    "message": f"position {pos}: recorded `{exc.recorded}`, now `{exc.called}`; "
                    "executed afresh",
                },
            )
            self.at.pop(pos, None)
            return None

    def block(
        self,
        poll: Any,
        deadline: float | None,
        ready: Any,
        wake_on: dict[str, str] | None = None,
    ) -> tuple[bool, Any]:
        while True:
            done, value = poll()
            if done:
                return done, value
            if deadline is not None and time.time() >= deadline:
                return False, None
            self.boundary()
            # The worker holds this call until something may have changed, or suspends the
            # sandbox (stop + retry) if the wait is long.
            self.client.call("park", deadline=deadline, wake_on=wake_on or {})

    def remote_step(self, name: str, kind: str, request: dict[str, Any]) -> Any:
        """A step the worker executes and records (a model call: the keys stay outside)."""
        pos = self.next_position()
        entry = self.recorded(pos, (kind,), name)
        if entry is None:
            self.boundary()
            # `after`: the worker only looks for an already recorded answer among entries
            # this process has not read yet (a reply lost in transit), not the whole log.
            payload = self.client.call(
                "model", pos=pos, name=name, kind=kind, request=request, after=self.last_seq
            )
        else:
            payload = entry.payload
        if "error" in payload:
            from ..engine._codec import decode_error

            raise decode_error(payload["error"])
        return payload.get("result")

    @property
    def client(self) -> GatewayClient:
        store = self.store
        assert isinstance(store, GatewayStore)
        return store.client

    def set_status(self, status: RunStatus, *, release: bool = False) -> None:
        pass  # the worker keeps the run's status
