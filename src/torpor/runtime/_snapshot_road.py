"""Executing a snapshot-road run: the workflow in a sandbox, the worker behind its gateway.

The worker launches the sandbox (or restores the run's newest snapshot), answers the
gateway's calls against the store under its lease, and checkpoints the sandbox:

- when a wait will be long: the sandbox stops itself, is dumped and removed, and the run is
  ``suspended`` until its event or deadline (waiting costs disk, not memory);
- by policy (``TORPOR_CHECKPOINT_POLICY``: ``wait`` — only at long waits and on demand,
  the default; ``step`` — after every recorded step; ``interval:SECONDS``);
- on demand (``torpor snapshot RUN``) and when the worker is told to stop (the run is
  released with a fresh snapshot and another worker restores it).

After a crash (the worker's or the sandbox's), the next worker restores the newest snapshot;
the process repeats the calls it made after it and the gateway answers those from the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._config import Settings
from .._errors import (
    FencedError,
    RunNotFoundError,
    RunStateError,
    StoreUnavailableError,
    TorporError,
)
from .._model import LogEntry, Road, RunRecord, RunStatus, SnapshotRecord
from ..engine._codec import encode_error
from ..gateway._client import record_to_wire
from ..gateway._protocol import GATEWAY_ENV
from ..gateway._server import GatewayServer
from ..sandbox._fingerprint import base_root_record, write_base_root
from ..sandbox._inspect import tree_processes
from ..store import Store

if TYPE_CHECKING:
    from ..snapshots import Restored

__all__ = ["CHECKPOINT_EVENT", "SnapshotRoadRun", "checkpoint_now", "checkpoint_policy"]

log = logging.getLogger("torpor.worker")

# Sent as an event by `torpor snapshot RUN`; the worker consumes it, the workflow never sees it.
CHECKPOINT_EVENT = "torpor.checkpoint"
_SOCKET = "gateway.sock"
_INSIDE = "/run/torpor/" + _SOCKET


def checkpoint_now(store: Store, run_id: str, timeout: float = 60.0) -> SnapshotRecord:
    """Ask the worker executing a snapshot-road run to checkpoint it; the new snapshot.

    A suspended run's state already is its newest snapshot, which is returned.
    """
    run = store.get_run(run_id)
    if run.road is not Road.SNAPSHOT:
        raise TorporError(
            f"run {run_id} is on the replay road: its journal is its state, it has no "
            "snapshots (start runs with road='snapshot')"
        )
    before = store.list_snapshots(run_id)
    if run.status is RunStatus.SUSPENDED and before:
        return before[-1]
    if run.status is not RunStatus.RUNNING:
        raise RunStateError(run_id, run.status.value, "checkpoint it (only a running run is)")
    store.send_event(run_id, CHECKPOINT_EVENT, {"requested_at": time.time()})
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        now = store.list_snapshots(run_id)
        if len(now) > len(before):
            return now[-1]
        time.sleep(0.2)
    raise TorporError(
        f"no snapshot of {run_id} within {timeout:g} s; the request stays queued for its "
        "worker (`torpor snapshots` lists what was made)"
    )


def checkpoint_policy() -> tuple[str, float]:
    raw = os.environ.get("TORPOR_CHECKPOINT_POLICY", "wait").strip().lower()
    if raw in ("wait", "step"):
        return raw, 0.0
    if raw.startswith("interval:"):
        try:
            return "interval", float(raw.split(":", 1)[1])
        except ValueError:
            pass
    raise TorporError(f"TORPOR_CHECKPOINT_POLICY={raw!r}: use 'wait', 'step' or 'interval:SECONDS'")


def suspend_after() -> float:
    return float(os.environ.get("TORPOR_SUSPEND_AFTER", "3"))


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _wait_stopped(pid: int, timeout: float = 30.0) -> None:
    """Until the process that was told to stop itself (a `stop` reply) has done so."""
    end = time.monotonic() + timeout
    while _state(pid) != "T" and time.monotonic() < end:
        time.sleep(0.002)


@dataclass
class SnapshotRoadRun:
    """One claim of a snapshot-road run by this worker."""

    store: Store
    run: RunRecord
    worker_id: str
    stopping: threading.Event
    spawn: Any
    settings: Settings = field(default_factory=Settings.from_env)
    outcome: str | None = None  # ended | suspended | released | fenced | failed
    # A failed suspend (CRIU refused) falls back to waiting in the live sandbox.
    suspend_failed: bool = False
    _done: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_checkpoint: float = field(default_factory=time.monotonic)

    def execute(self) -> RunStatus | None:
        from ..sandbox import Sandbox
        from ..snapshots import SnapshotNotFoundError, SnapshotStore

        self.snapshots = SnapshotStore.from_settings(self.store, self.settings)
        self.policy, self.interval = checkpoint_policy()
        _remove_orphans(self.settings)
        restored_dir: Path | None = None
        try:
            restored = self._restore_latest()
        except SnapshotNotFoundError:
            self.box = Sandbox.launch(
                [sys.executable, "-m", "torpor.gateway._runner"],
                env={GATEWAY_ENV: _INSIDE, "TORPOR_SANDBOXED": "1"},
                settings=self.settings,
                share=self._code_paths(),
            )
        else:
            self.box = restored.sandbox
            restored_dir = restored.directory
            self._record(
                "restored",
                {
                    "snapshot": restored.record.id,
                    "seq": restored.record.seq,
                    "fetch_ms": restored.fetch_ms,
                    "restore_ms": restored.restore_ms,
                    "skipped": [str(e) for e in restored.skipped],
                },
            )
        self.server = GatewayServer(self.box.directory / "run" / _SOCKET, self._handle)
        try:
            self.server.open()
            if restored_dir is not None:
                self._continue_stopped()
            # The checkpoint interval counts from when the sandbox runs, not from the
            # claim: a slow restore must not be followed at once by a needless checkpoint.
            self._last_checkpoint = time.monotonic()
            return self._supervise()
        finally:
            self.server.close()
            if self.box.poll() is None:
                self.box.kill()
            self.box.teardown()
            if restored_dir is not None:
                shutil.rmtree(restored_dir, ignore_errors=True)

    def _restore_latest(self) -> Restored:
        """Restore the run's newest snapshot. A sandbox of the same id still running on this
        machine is an earlier incarnation of this run whose worker lost the lease (stopped
        or paused past it: alive, so not an orphan). This worker holds the run now: that
        copy is killed, and the snapshot restored under a new sandbox id, since the old
        worker, should it go on, still owns the old id's directory and gateway socket."""
        from ..sandbox import SandboxError
        from ..sandbox._host import alive, kill_tree
        from ..sandbox._records import read_sandbox_meta
        from ..snapshots import restore_latest

        skip = self._rolled_back()
        try:
            return restore_latest(self.snapshots, self.run.id, settings=self.settings, skip=skip)
        except SandboxError as exc:
            meta = read_sandbox_meta(self.settings.home / "sandboxes" / exc.sandbox_id) or {}
            if not alive(meta.get("pid"), meta.get("pid_start")):
                raise
            log.warning(
                "run %s: sandbox %s still runs for a worker that lost the run; killed it, "
                "restoring under a new sandbox id",
                self.run.id,
                exc.sandbox_id,
            )
            kill_tree(meta["pid"], meta.get("pid_start"))
        return restore_latest(
            self.snapshots, self.run.id, settings=self.settings, skip=skip, fork=True
        )

    def _rolled_back(self) -> set[str]:
        """Snapshots of timelines `torpor resume --from` rolled the run back from."""
        from ._api import abandoned_snapshots

        return abandoned_snapshots(self.store, self.run.id)

    def _code_paths(self) -> list[str]:
        """What the runner must see of the host: this Python and torpor, and the
        workflow's own code (the sandbox's /tmp is private, and projects live anywhere)."""
        paths = [sys.prefix, os.path.realpath(sys.executable), *(p for p in sys.path if p)]
        source = self.run.source or {}
        if "file" in source:
            paths.append(source["file"])
        return paths

    def _supervise(self) -> RunStatus | None:
        next_request_check = time.monotonic() + 1.0
        while not self._done.wait(0.05):
            if self.box.poll() is not None:
                with self._lock:
                    pass  # a checkpoint that stopped the tree sets the outcome under the lock
                break
            if self.stopping.is_set():
                self._checkpoint(leave_running=False, status=RunStatus.QUEUED, kind="released")
                break
            since = time.monotonic() - self._last_checkpoint
            if self.policy == "interval" and since > self.interval:
                self._checkpoint(leave_running=True)
            if time.monotonic() >= next_request_check:
                next_request_check = time.monotonic() + 1.0
                if self._checkpoint_requested():
                    self._checkpoint(leave_running=True)
        if self.outcome is None:
            # The sandbox died without ending the run: restart it from the newest snapshot.
            code = self.box.poll()
            tail = _tail(self.box.stderr_path)
            self._release_for_retry(f"the sandbox exited ({code}) mid-run: {tail}")
            return None
        if self.outcome == "ended":
            return self.store.get_run(self.run.id).status
        return None

    # -- the gateway ----------------------------------------------------------------------

    def _handle(self, request: dict[str, Any], peer: int) -> tuple[dict[str, Any], Any]:
        op = request.get("op")
        try:
            method = getattr(self, f"_op_{op}")
        except AttributeError:
            return {"error": {"type": "TorporError", "message": f"unknown gateway op {op!r}"}}, None
        try:
            return method(request, peer)  # type: ignore[no-any-return]
        except FencedError as exc:
            self.outcome = "fenced"
            self._done.set()
            error = {
                "type": "FencedError",
                "run_id": exc.run_id,
                "epoch": exc.epoch,
                "current": exc.current_epoch,
            }
            return {"error": error}, None
        except StoreUnavailableError as exc:
            # Whether the write landed is unknown, and an error reply would fail the run:
            # end this attempt with its sandbox; the next claim restores the newest
            # snapshot and the log answers what was recorded since.
            log.warning(
                "run %s: the store is unreachable (%s); the sandbox is stopped and the run "
                "resumes from its newest snapshot when its lease expires",
                self.run.id,
                exc.reason,
            )
            self.outcome = "unreachable"
            self.box.kill()
            self._done.set()
            return {"error": {"type": type(exc).__name__, "message": exc.message}}, None
        except TorporError as exc:
            return {"error": {"type": type(exc).__name__, "message": exc.message}}, None

    def _op_hello(self, request: dict[str, Any], peer: int) -> Any:
        return {
            "result": {
                "run": record_to_wire(self.run),
                "worker": self.worker_id,
                "sys_path": [p for p in sys.path if p],
            }
        }, None

    def _op_read(self, request: dict[str, Any], peer: int) -> Any:
        entries = self.store.read(
            self.run.id, after=int(request.get("after") or 0), limit=request.get("limit")
        )
        rows = [
            {"seq": e.seq, "kind": e.kind, "payload": e.payload, "created_at": e.created_at}
            for e in entries
        ]
        return {"result": rows}, None

    def _op_append(self, request: dict[str, Any], peer: int) -> Any:
        once_after = request.get("once_after")
        payload = request.get("payload")
        if once_after is not None and isinstance(payload, dict):
            found = self._recorded_since(int(once_after), str(request["kind"]), payload.get("pos"))
            if found is not None:
                return {"result": {"seq": found.seq, "cancel_requested": False}}, None
        appended = self.store.append_owned(
            self.run.id,
            str(request["kind"]),
            request.get("payload"),
            expected_seq=request.get("expected_seq"),
            epoch=self.run.epoch,
        )
        result = {"seq": appended.seq, "cancel_requested": appended.cancel_requested}
        return {"result": result}, None

    def _recorded_since(self, after: int, kind: str, pos: Any) -> LogEntry | None:
        """The entry of ``kind`` at call position ``pos`` recorded after seq ``after`` in
        the run's current timeline, if any (a call sent again: after a lost reply, or by a
        copy restored from a snapshot taken before its answer was recorded). Only the log
        past what the sandbox has read is looked at: a whole log would cost O(turns)."""
        found: LogEntry | None = None
        for entry in self.store.read(self.run.id, after=after):
            fields = entry.payload if isinstance(entry.payload, dict) else {}
            if entry.kind == kind and fields.get("pos") == pos:
                found = entry
            elif (
                entry.kind == "rollback"
                and found is not None
                and found.seq > int(fields.get("to_seq", 0))
            ):
                found = None  # recorded in a timeline the run was rolled back from
        return found

    def _op_safepoint(self, request: dict[str, Any], peer: int) -> Any:
        """Before a step's result is recorded (policy `step`), and at `torpor.checkpoint()`:
        the sandbox stops itself after this reply, is dumped and continued."""
        if not request.get("force") and self.policy != "step":
            return {"result": "passed"}, None
        return {"stop": "after", "result": "checkpointed"}, lambda: self._safe_point(peer)

    def _op_consume_event(self, request: dict[str, Any], peer: int) -> Any:
        event = self.store.consume_event(
            self.run.id,
            str(request["name"]),
            epoch=self.run.epoch,
            entry=request.get("entry") or {},
        )
        if event is None:
            return {"result": None}, None
        return {
            "result": {
                "id": event.id,
                "payload": event.payload,
                "created_at": event.created_at,
                "consumed_seq": event.consumed_seq,
            }
        }, None

    def _op_update_run(self, request: dict[str, Any], peer: int) -> Any:
        fields = {
            k: request[k]
            for k in ("output", "error", "wake_at", "release", "entry")
            if k in request
        }
        if isinstance(fields.get("entry"), list):
            fields["entry"] = tuple(fields["entry"])
        status = RunStatus(request["status"])
        record = self.store.update_run(self.run.id, self.run.epoch, status=status, **fields)
        if status.terminal:
            self.outcome = "ended"
            if record.parent_id:
                self.store.wake_run(record.parent_id)
        return {"result": record_to_wire(record)}, None

    def _op_get_run(self, request: dict[str, Any], peer: int) -> Any:
        return {"result": record_to_wire(self.store.get_run(str(request["run_id"])))}, None

    def _op_create_run(self, request: dict[str, Any], peer: int) -> Any:
        fields = {k: v for k, v in request.items() if k not in ("op", "workflow")}
        if "road" in fields:
            fields["road"] = Road(fields["road"])
        return {
            "result": record_to_wire(self.store.create_run(request["workflow"], **fields))
        }, None

    def _op_add_timer(self, request: dict[str, Any], peer: int) -> Any:
        timer = self.store.add_timer(self.run.id, str(request["name"]), float(request["fire_at"]))
        return {"result": {"id": timer.id}}, None

    def _op_spawn(self, request: dict[str, Any], peer: int) -> Any:
        self.spawn(str(request["run_id"]))
        return {"result": None}, None

    def _op_model(self, request: dict[str, Any], peer: int) -> Any:
        """A model call for the sandbox, made here with the worker's keys and recorded."""
        from ..agent._items import ToolSpec
        from ..agent._providers import Provider, non_retryable_errors
        from ..engine._steps import StepOptions

        pos, name, kind = int(request["pos"]), str(request["name"]), str(request["kind"])
        answered = self._recorded_since(int(request.get("after") or 0), kind, pos)
        if answered is not None:
            return {"result": answered.payload}, None
        spec = request["request"]
        provider = Provider(
            spec["provider"],
            spec["model"],
            spec.get("base_url"),
            max_tokens=int(spec.get("max_tokens") or 4096),
        )
        tools = [ToolSpec.from_json(t) for t in spec.get("tools", [])]
        options = StepOptions(
            name=name,
            retries=int(spec.get("retries", 4)),
            backoff=1.0,
            max_backoff=30.0,
            timeout=None,
            non_retryable=non_retryable_errors(),
            kind=kind,
        )
        attempt = 1
        while True:
            try:
                reply = provider.complete(spec.get("system", ""), spec["items"], tools)
                payload: dict[str, Any] = {"pos": pos, "name": name, "result": reply.to_json()}
                break
            except Exception as exc:
                if not options.retryable(exc, attempt):
                    payload = {"pos": pos, "name": name, "error": encode_error(exc)}
                    break
                delay = options.delay(attempt)
                self._record(
                    "step_retry",
                    {
                        "at": pos,
                        "name": name,
                        "attempt": attempt,
                        "delay": delay,
                        "error": encode_error(exc),
                    },
                )
                time.sleep(delay)
                attempt += 1
        if attempt > 1:
            payload["attempt"] = attempt
        self.store.append(self.run.id, kind, payload, epoch=self.run.epoch)
        return {"result": payload}, None

    def _op_exit(self, request: dict[str, Any], peer: int) -> Any:
        if self.outcome is None:
            self.outcome = "ended" if request.get("status") else "failed"
        self._done.set()
        return {"result": None}, None

    def _op_park(self, request: dict[str, Any], peer: int) -> Any:
        deadline = request.get("deadline")
        wake_on = request.get("wake_on") or {}
        remaining = None if deadline is None else float(deadline) - time.time()
        long_wait = remaining is None or remaining > suspend_after()
        if long_wait and not self.suspend_failed:
            # Once continued (restored), the sandbox returns to its wait loop and looks again.
            reply = {"stop": "after", "result": "retry"}
            return reply, lambda: self._suspend(peer, deadline, wake_on)
        # A short wait: hold the call until the deadline or what the run waits for.
        end = time.monotonic() + (1.0 if remaining is None else max(0.0, remaining))
        while time.monotonic() < end and not self.server.quiescing.is_set():
            if self._woken(wake_on):
                break
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        return {"result": "retry"}, None

    def _woken(self, wake_on: dict[str, str]) -> bool:
        if "event" in wake_on:
            return any(
                e.name == wake_on["event"] and e.consumed_seq is None
                for e in self.store.list_events(self.run.id)
            )
        if "child" in wake_on:
            return self.store.get_run(wake_on["child"]).status.terminal
        return False

    # -- checkpoints ----------------------------------------------------------------------

    def _checkpoint_requested(self) -> bool:
        taken = self.store.consume_event(
            self.run.id, CHECKPOINT_EVENT, epoch=self.run.epoch, entry={"requested": True}
        )
        return taken is not None

    def _suspend(self, peer: int, deadline: Any, wake_on: dict[str, str]) -> None:
        """The sandbox stops itself after the reply; dump it, store it, release the run."""
        _wait_stopped(peer)
        wake_at = None if deadline is None else float(deadline)
        self._checkpoint(
            leave_running=False,
            status=RunStatus.SUSPENDED,
            wake_at=wake_at,
            kind="suspended",
            wake_on=wake_on,
        )

    def _checkpoint(self, **how: Any) -> None:
        """Checkpoint the sandbox (see `_checkpoint_locked`). Without the store this attempt
        ends: whether the snapshot or the run's new status landed is unknown, and a sandbox
        left stopped or without its gateway would hang; the run comes back from its newest
        listed snapshot once its lease expires."""
        try:
            self._checkpoint_locked(**how)
        except StoreUnavailableError as exc:
            log.warning(
                "run %s: the store is unreachable during a checkpoint (%s); the sandbox is "
                "stopped and the run resumes from its newest snapshot when its lease expires",
                self.run.id,
                exc.reason,
            )
            self.outcome = "unreachable"
            if self.box.poll() is None:
                self.box.kill()
            self._done.set()

    def _checkpoint_locked(
        self,
        *,
        leave_running: bool,
        status: RunStatus | None = None,
        wake_at: float | None = None,
        kind: str = "snapshot",
        wake_on: dict[str, str] | None = None,
    ) -> None:
        with self._lock:
            if self._done.is_set() or self.box.poll() is not None:
                return
            if not self.server.quiesce():
                log.warning("run %s: a gateway call stayed open; checkpoint skipped", self.run.id)
                self.server.reopen()
                return
            images = Path(tempfile.mkdtemp(prefix="torpor-cp-", dir=self.settings.home))
            shutil.rmtree(images)
            try:
                seq = self.store.get_run(self.run.id).last_seq
                # Taken from the live tree: the host files it runs on, checked at restore.
                base_root = base_root_record(
                    tree_processes(self.box.pid or 0), self.box.pid or 0, self.box.base_root
                )
                checkpoint = self.box.checkpoint(images, leave_running=leave_running)
                write_base_root(checkpoint.directory, base_root)
                snapshot_id = self.snapshots.save(
                    checkpoint, run_id=self.run.id, seq=seq, epoch=self.run.epoch
                )
            except StoreUnavailableError:
                raise  # see _checkpoint
            except FencedError:
                # Another worker claimed the run meanwhile: this copy is stale, its snapshot
                # was not listed; stop here (the new owner restores its own newest).
                log.warning("run %s: lost the run during a checkpoint; stopping", self.run.id)
                self.outcome = "fenced"
                self._done.set()
                return
            except TorporError as exc:
                log.warning("run %s: checkpoint failed: %s", self.run.id, exc.message)
                self._record("warning", {"message": f"checkpoint failed: {exc.message}"})
                if self.box.poll() is None:
                    self.server.reopen()
                    if status is not None:
                        # It stopped itself to be suspended: let it go on waiting alive.
                        self.suspend_failed = True
                        self._continue_stopped()
                return
            finally:
                shutil.rmtree(images, ignore_errors=True)
            self._last_checkpoint = time.monotonic()
            payload = {
                "snapshot": snapshot_id,
                "seq": seq,
                "dump_ms": round(checkpoint.dump_seconds * 1000, 1),
            }
            if status is None:
                self._record(kind, payload)
                self.server.reopen()
                return
            with contextlib.suppress(FencedError):
                self.store.update_run(
                    self.run.id,
                    self.run.epoch,
                    status=status,
                    wake_at=wake_at,
                    release=True,
                    entry=(kind, payload),
                )
            if wake_on and self._woken(wake_on):
                self.store.wake_run(self.run.id)  # it came during the dump
            self.outcome = kind
            self._done.set()

    def _safe_point(self, peer: int) -> None:
        _wait_stopped(peer)
        try:
            self._checkpoint(leave_running=True)
        finally:
            self._continue_stopped()

    def _continue_stopped(self) -> None:
        pid = self.box.pid
        if pid is None:
            return
        for proc in tree_processes(pid):
            if _state(proc) == "T":
                os.kill(proc, signal.SIGCONT)

    def _record(self, kind: str, payload: dict[str, Any]) -> None:
        with contextlib.suppress(FencedError, RunNotFoundError):
            self.store.append(self.run.id, kind, payload, epoch=self.run.epoch)

    def _release_for_retry(self, why: str) -> None:
        from ._failures import MAX_FAILURES, failures_in_a_row

        try:
            if failures_in_a_row(self.store, self.run.id) + 1 >= MAX_FAILURES:
                error = encode_error(TorporError(why))
                self.store.update_run(
                    self.run.id,
                    self.run.epoch,
                    status=RunStatus.FAILED,
                    error=error,
                    entry=("failed", {"message": why}),
                )
            else:
                self.store.update_run(
                    self.run.id,
                    self.run.epoch,
                    status=RunStatus.QUEUED,
                    release=True,
                    entry=("sandbox_died", {"message": why}),
                )
        except FencedError:
            pass


def _remove_orphans(settings: Settings) -> None:
    """Sandboxes of dead workers (a run this worker may restore could still be running in
    one, reaching a gateway that is gone): killed and removed before restoring."""
    from ..sandbox import find_orphans, remove_orphans

    try:
        orphans = find_orphans(settings)
        if orphans:
            remove_orphans(orphans)
    except Exception:
        log.warning("removing orphaned sandboxes failed", exc_info=True)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no output)"
    return " | ".join(text[-lines:]) or "(no output)"
