"""Executing a snapshot-road run: the workflow in a sandbox, the worker behind its gateway.

The worker launches the sandbox (or restores the run's newest snapshot), answers the
gateway's calls against the store under its lease (`GatewayService`, with this class as its
`SandboxHost`), and checkpoints the sandbox (`Checkpointer`):

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
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._config import Settings
from ..._errors import FencedError, RunNotFoundError, StoreUnavailableError, TorporError
from ..._model import RunRecord, RunStatus
from ...engine import encode_error
from ...gateway import GATEWAY_ENV, GatewayServer, GatewayService, Reply
from ...log import MAX_FAILURES, abandoned_snapshots, failures_in_a_row, wait_is_over
from ...sandbox import (
    Sandbox,
    SandboxError,
    alive,
    find_orphans,
    kill_tree,
    read_run_file,
    read_sandbox_meta,
    remove_orphans,
)
from ...store import Store
from ._checkpoints import Checkpointer

if TYPE_CHECKING:
    from ...snapshots import SnapshotStore
    from ._restore import Restored

__all__ = ["SnapshotRoadRun"]

log = logging.getLogger("torpor.worker")

_SOCKET = "gateway.sock"
_INSIDE = "/run/torpor/" + _SOCKET
# Model SDKs inside the sandbox want a key to exist; the real ones stay with the worker,
# which makes the model calls (host calls) itself.
_PLACEHOLDER_KEYS = {
    "OPENAI_API_KEY": "torpor-sandbox-placeholder",
    "ANTHROPIC_API_KEY": "torpor-sandbox-placeholder",
}


@dataclass
class SnapshotRoadRun:
    """One claim of a snapshot-road run by this worker; the gateway's `SandboxHost`."""

    store: Store
    run: RunRecord
    worker_id: str
    stopping: threading.Event
    spawner: Callable[[str], None]
    settings: Settings = field(default_factory=Settings.from_env)
    outcome: str | None = None  # ended | suspended | released | fenced | failed | unreachable
    _done: threading.Event = field(default_factory=threading.Event)

    def execute(self) -> RunStatus | None:
        # Loaded here, not with torpor: see the package's __getattr__.
        from ...snapshots import SnapshotNotFoundError, SnapshotStore

        snapshots = SnapshotStore.from_settings(self.store, self.settings)
        _remove_orphans(self.settings)
        restored: Restored | None = None
        try:
            restored = self._restore_latest(snapshots)
        except SnapshotNotFoundError:
            self.box = Sandbox.launch(
                [sys.executable, "-m", "torpor.gateway._runner"],
                env={GATEWAY_ENV: _INSIDE, **_PLACEHOLDER_KEYS},
                settings=self.settings,
                share=self._code_paths(),
                memory_limit=self.settings.sandbox_memory_bytes,
                pids_limit=self.settings.sandbox_pids,
                cpu_limit=self.settings.sandbox_cpus,
            )
        else:
            self.box = restored.sandbox
            self._record("restored", {
                "snapshot": restored.record.id, "seq": restored.record.seq,
                "fetch_ms": restored.fetch_ms, "restore_ms": restored.restore_ms,
                "skipped": [str(e) for e in restored.skipped],
            })  # fmt: skip
        self.server = GatewayServer(
            self.box.directory / "run" / _SOCKET,
            GatewayService(self).handle,
            authorize=self._authorize,
        )
        self.checkpoints = Checkpointer(
            self.store, self.run, self.box, self.server, snapshots, self.settings,
            self._done, self._finish, self._record,
        )  # fmt: skip
        try:
            self.server.open()
            if restored is not None:
                self.checkpoints.continue_stopped()
            # The checkpoint interval counts from when the sandbox runs, not from the
            # claim: a slow restore must not be followed at once by a needless checkpoint.
            self.checkpoints.last = time.monotonic()
            return self._supervise()
        finally:
            self.server.close()
            if self.box.poll() is None:
                self.box.kill()
            self.box.teardown()
            if restored is not None:
                shutil.rmtree(restored.directory, ignore_errors=True)

    def _restore_latest(self, snapshots: SnapshotStore) -> Restored:
        """Restore the run's newest snapshot. A sandbox of the same id still running on this
        machine is an earlier incarnation of this run whose worker lost the lease (stopped
        or paused past it: alive, so not an orphan). This worker holds the run now: that
        copy is killed, and the snapshot restored under a new sandbox id, since the old
        worker, should it go on, still owns the old id's directory and gateway socket."""
        from ._restore import restore_latest

        skip = abandoned_snapshots(self.store.read(self.run.id))
        try:
            return restore_latest(snapshots, self.run.id, settings=self.settings, skip=skip)
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
        return restore_latest(snapshots, self.run.id, settings=self.settings, skip=skip, fork=True)

    def _code_paths(self) -> list[str]:
        """What the runner must see of the host: this Python and torpor, and the
        workflow's own code (the sandbox's /tmp is private, and projects live anywhere)."""
        paths = [sys.prefix, os.path.realpath(sys.executable), *(p for p in sys.path if p)]
        source = self.run.source or {}
        if "file" in source:
            paths.append(source["file"])
        return paths

    def _authorize(self, peer: int) -> str | None:
        """Whether a gateway caller (host pid ``peer``) is a process of this run's sandbox:
        in the pid namespace of the sandbox's init. Asked of the current init, so a
        restored sandbox (a new init) is recognised. Anyone else (another sandbox, a
        process of the host) is refused: the socket file alone is no proof of identity."""
        init = self.box.pid
        if init is None:
            return f"the sandbox of run {self.run.id} is not running"
        if peer <= 0:
            return f"the caller is in no pid namespace of this host's (pid {peer})"
        try:
            theirs = os.stat(f"/proc/{peer}/ns/pid")
            ours = os.stat(f"/proc/{init}/ns/pid")
        except OSError as exc:
            return f"process {peer} could not be checked ({exc.strerror})"
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):
            return f"process {peer} is not in the sandbox of run {self.run.id}"
        return None

    def _supervise(self) -> RunStatus | None:
        next_request_check = time.monotonic() + 1.0
        while not self._done.wait(0.05):
            if self.box.poll() is not None:
                with self.checkpoints.lock:
                    pass  # a checkpoint that stopped the tree sets the outcome under the lock
                break
            if self.stopping.is_set():
                self.checkpoints.take(leave_running=False, status=RunStatus.QUEUED, kind="released")
                break
            if self.checkpoints.due():
                self.checkpoints.take(leave_running=True)
            if time.monotonic() >= next_request_check:
                next_request_check = time.monotonic() + 1.0
                if self.checkpoints.requested():
                    self.checkpoints.take(leave_running=True)
        if self.outcome is None:
            # The sandbox died without ending the run: restart it from the newest snapshot.
            code = self.box.poll()
            tail = _tail(self.box.stderr_path)
            hits = "; ".join(str(hit) for hit in self.box.limits_hit() if hit.fatal)
            why = f"the sandbox was killed: {hits}" if hits else f"the sandbox exited ({code})"
            self._release_for_retry(f"{why} mid-run: {tail}")
            return None
        if self.outcome == "ended":
            return self.store.get_run(self.run.id).status
        return None

    def _finish(self, outcome: str) -> None:
        self.outcome = outcome
        self._done.set()

    # -- SandboxHost: what the gateway asks of this worker ---------------------------------

    def spawn(self, run_id: str) -> None:
        self.spawner(run_id)

    def at_safepoint(self, force: bool, peer: int) -> Reply:
        """Before a step's result is recorded (policy `step`), and at `torpor.checkpoint()`:
        the sandbox stops itself after this reply, is dumped and continued."""
        if not force and self.settings.checkpoint_policy != "step":
            return Reply("passed")
        return Reply(
            "checkpointed", stop="after", then=lambda: self.checkpoints.at_safe_point(peer)
        )

    def at_park(self, deadline: float | None, wake_on: dict[str, str], peer: int) -> Reply:
        remaining = None if deadline is None else deadline - time.time()
        long_wait = remaining is None or remaining > self.settings.suspend_after
        if long_wait and not self.checkpoints.suspend_failed:
            # Once continued (restored), the sandbox returns to its wait loop and looks again.
            return Reply(
                "retry", stop="after",
                then=lambda: self.checkpoints.suspend(peer, deadline, wake_on),
            )  # fmt: skip
        # A short wait: hold the call until the deadline or what the run waits for.
        end = time.monotonic() + (1.0 if remaining is None else max(0.0, remaining))
        while time.monotonic() < end and not self.server.quiescing.is_set():
            if wait_is_over(self.store, self.run.id, wake_on):
                break
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
        return Reply("retry")

    def ended(self) -> None:
        self.outcome = "ended"

    def exited(self, status: str | None) -> None:
        if self.outcome is None:
            self.outcome = "ended" if status else "failed"
        self._done.set()

    def lost(self) -> None:
        self._finish("fenced")

    def unreachable(self, exc: StoreUnavailableError) -> None:
        # Whether the write landed is unknown, and an error reply would fail the run: end
        # this attempt with its sandbox; the next claim restores the newest snapshot and
        # the log answers what was recorded since.
        log.warning(
            "run %s: the store is unreachable (%s); the sandbox is stopped and the run "
            "resumes from its newest snapshot when its lease expires",
            self.run.id,
            exc.reason,
        )
        self.box.kill()
        self._finish("unreachable")

    # -------------------------------------------------------------------------------------

    def _record(self, kind: str, payload: dict[str, Any]) -> None:
        with contextlib.suppress(FencedError, RunNotFoundError):
            self.store.append(self.run.id, kind, payload, epoch=self.run.epoch)

    def _release_for_retry(self, why: str) -> None:
        try:
            if failures_in_a_row(self.store, self.run.id) + 1 >= MAX_FAILURES:
                self.store.update_run(
                    self.run.id, self.run.epoch, status=RunStatus.FAILED,
                    error=encode_error(TorporError(why)), entry=("failed", {"message": why}),
                )  # fmt: skip
            else:
                self.store.update_run(
                    self.run.id, self.run.epoch, status=RunStatus.QUEUED, release=True,
                    entry=("sandbox_died", {"message": why}),
                )  # fmt: skip
        except FencedError:
            pass


def _remove_orphans(settings: Settings) -> None:
    """Sandboxes of dead workers (a run this worker may restore could still be running in
    one, reaching a gateway that is gone): killed and removed before restoring."""
    try:
        orphans = find_orphans(settings)
        if orphans:
            remove_orphans(orphans)
    except Exception:
        log.warning("removing orphaned sandboxes failed", exc_info=True)


def _tail(path: Path, lines: int = 5, limit: int = 64 * 1024) -> str:
    """The last ``lines`` lines of the sandbox's output file ``path`` (``<sandbox>/run/X``
    or the same in a checkpoint), for a log entry. The sandbox owns ``run/`` (it is its
    ``/run/torpor``) and may have put a link, a FIFO or a device there instead of the
    file: only a regular file reached without following a link is read, and only its
    last ``limit`` bytes."""
    try:
        data = read_run_file(path.parent, path.name, limit, tail=True)
    except OSError as exc:
        return f"(no output: {exc.strerror or exc})"
    text = data.strip().splitlines()
    return " | ".join(text[-lines:]) or "(no output)"
