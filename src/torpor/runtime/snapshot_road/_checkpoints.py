"""Checkpoints of a running sandbox: by policy, on demand, at a safe point, and when the
run suspends (a long wait) or is released (the worker stops).

A checkpoint quiesces the gateway (no call in flight, so the sandbox holds no connection to
the worker), dumps the tree with CRIU, stores the images as a snapshot at the log's current
position, and lets the sandbox go on — or, when suspending or releasing, ends this claim.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._config import Settings
from ..._errors import FencedError, RunStateError, StoreUnavailableError, TorporError
from ..._model import Road, RunRecord, RunStatus, SnapshotRecord
from ...gateway import GatewayServer
from ...log import wait_is_over
from ...sandbox import Sandbox, process_state, tree_processes
from ...store import Store

if TYPE_CHECKING:
    from ...snapshots import SnapshotStore

__all__ = ["CHECKPOINT_EVENT", "Checkpointer", "checkpoint_now"]

log = logging.getLogger("torpor.worker")

# Sent as an event by `torpor snapshot RUN`; the worker consumes it, the workflow never sees it.
CHECKPOINT_EVENT = "torpor.checkpoint"


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


def wait_stopped(pid: int, timeout: float = 30.0) -> None:
    """Until the process that was told to stop itself (a `stop` reply) has done so."""
    end = time.monotonic() + timeout
    while process_state(pid) != "T" and time.monotonic() < end:
        time.sleep(0.002)


@dataclass
class Checkpointer:
    """Checkpoints one claim's sandbox. ``finish(outcome)`` ends the claim (suspended,
    released, fenced, unreachable); ``record`` logs an entry under the claim."""

    store: Store
    run: RunRecord
    box: Sandbox
    server: GatewayServer
    snapshots: SnapshotStore
    settings: Settings
    done: threading.Event
    finish: Callable[[str], None]
    record: Callable[[str, dict[str, Any]], None]
    # A failed suspend (CRIU refused) falls back to waiting in the live sandbox.
    suspend_failed: bool = False
    last: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def due(self) -> bool:
        """Whether the `interval` policy asks for a checkpoint now."""
        interval = self.settings.checkpoint_interval
        return self.settings.checkpoint_policy == "interval" and (
            time.monotonic() - self.last > interval
        )

    def requested(self) -> bool:
        """Whether someone asked for one (`torpor snapshot RUN`); the request is consumed."""
        taken = self.store.consume_event(
            self.run.id, CHECKPOINT_EVENT, epoch=self.run.epoch, entry={"requested": True}
        )
        return taken is not None

    def suspend(self, peer: int, deadline: float | None, wake_on: dict[str, str]) -> None:
        """The sandbox stops itself after the reply; dump it, store it, release the run."""
        wait_stopped(peer)
        self.take(
            leave_running=False,
            status=RunStatus.SUSPENDED,
            wake_at=deadline,
            kind="suspended",
            wake_on=wake_on,
        )

    def at_safe_point(self, peer: int) -> None:
        wait_stopped(peer)
        try:
            self.take(leave_running=True)
        finally:
            self.continue_stopped()

    def continue_stopped(self) -> None:
        pid = self.box.pid
        if pid is None:
            return
        for proc in tree_processes(pid):
            if process_state(proc) == "T":
                os.kill(proc, signal.SIGCONT)

    def take(self, **how: Any) -> None:
        """Checkpoint the sandbox (see `_take`). Without the store this claim ends: whether
        the snapshot or the run's new status landed is unknown, and a sandbox left stopped
        or without its gateway would hang; the run comes back from its newest listed
        snapshot once its lease expires."""
        try:
            self._take(**how)
        except StoreUnavailableError as exc:
            log.warning(
                "run %s: the store is unreachable during a checkpoint (%s); the sandbox is "
                "stopped and the run resumes from its newest snapshot when its lease expires",
                self.run.id,
                exc.reason,
            )
            if self.box.poll() is None:
                self.box.kill()
            self.finish("unreachable")

    def _take(
        self,
        *,
        leave_running: bool,
        status: RunStatus | None = None,
        wake_at: float | None = None,
        kind: str = "snapshot",
        wake_on: dict[str, str] | None = None,
    ) -> None:
        with self.lock:
            if self.done.is_set() or self.box.poll() is not None:
                return
            if not self.server.quiesce():
                log.warning("run %s: a gateway call stayed open; checkpoint skipped", self.run.id)
                self.server.reopen()
                return
            images = Path(tempfile.mkdtemp(prefix="torpor-cp-", dir=self.settings.home))
            shutil.rmtree(images)
            try:
                seq = self.store.get_run(self.run.id).last_seq
                checkpoint = self.box.checkpoint(images, leave_running=leave_running)
                snapshot_id = self.snapshots.save(
                    checkpoint, run_id=self.run.id, seq=seq, epoch=self.run.epoch
                )
            except StoreUnavailableError:
                raise  # see take
            except FencedError:
                # Another worker claimed the run meanwhile: this copy is stale, its snapshot
                # was not listed; stop here (the new owner restores its own newest).
                log.warning("run %s: lost the run during a checkpoint; stopping", self.run.id)
                self.finish("fenced")
                return
            except TorporError as exc:
                log.warning("run %s: checkpoint failed: %s", self.run.id, exc.message)
                self.record("warning", {"message": f"checkpoint failed: {exc.message}"})
                if self.box.poll() is None:
                    self.server.reopen()
                    if status is not None:
                        # It stopped itself to be suspended: let it go on waiting alive.
                        self.suspend_failed = True
                        self.continue_stopped()
                return
            finally:
                shutil.rmtree(images, ignore_errors=True)
            self.last = time.monotonic()
            payload = {
                "snapshot": snapshot_id,
                "seq": seq,
                "dump_ms": round(checkpoint.dump_seconds * 1000, 1),
            }
            if status is None:
                self.record(kind, payload)
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
            if wake_on and wait_is_over(self.store, self.run.id, wake_on):
                self.store.wake_run(self.run.id)  # it came during the dump
            self.finish(kind)
