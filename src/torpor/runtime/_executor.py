"""Executing claimed runs in threads of this process, with their leases kept alive."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

from .._config import Settings
from .._errors import FencedError, StoreUnavailableError
from .._model import Road, RunRecord, RunStatus
from ..engine import StoreJournal, WorkflowContext, encode_error, execute_run
from ..log import MAX_FAILURES, failures_in_a_row
from ..store import Store
from .snapshot_road import SnapshotRoadRun

__all__ = ["Executor", "new_worker_id"]

log = logging.getLogger("torpor.worker")

# Runs waiting in this process each hold a thread; beyond this many, new runs queue.
_MAX_THREADS = 1024


def new_worker_id() -> str:
    return f"w-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Executor:
    """Runs claimed runs, one thread each, renewing their leases every third of a lease.

    ``park_after``: seconds a run may block in a wait before it is parked (released until
    its event or deadline); None keeps it waiting in this process.
    """

    def __init__(
        self,
        store: Store,
        *,
        worker_id: str | None = None,
        lease_seconds: float = 30.0,
        park_after: float | None = None,
        queue_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.store = store
        # Also for runs claimed by id (children, `start` without detach): a limit holds
        # whoever claims.
        self.queue_limits = dict(queue_limits) if queue_limits else None
        self.worker_id = worker_id or new_worker_id()
        self.lease_seconds = lease_seconds
        self.park_after = park_after
        self.stopping = threading.Event()
        self._active: dict[str, RunRecord] = {}
        self._contexts: dict[str, WorkflowContext] = {}
        # Pooled threads: starting a thread per run costs a GIL hand-off per start.
        self._pool = ThreadPoolExecutor(max_workers=_MAX_THREADS, thread_name_prefix="torpor-run")
        self._futures: dict[str, Future[None]] = {}
        self._finished: dict[str, threading.Event] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._heartbeat = threading.Thread(
            target=self._renew_leases, name="torpor-heartbeat", daemon=True
        )
        self._heartbeat.start()

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._active)

    def claim(
        self,
        queues: Sequence[str] | None = None,
        run_id: str | None = None,
        queue_limits: Mapping[str, int] | None = None,
    ) -> bool:
        """Claim one runnable run (or this one) and start it; False if there was none."""
        run = self.store.claim_run(
            self.worker_id,
            self.lease_seconds,
            queues,
            run_id=run_id,
            queue_limits=queue_limits if queue_limits is not None else self.queue_limits,
        )
        if run is None:
            return False
        self.submit(run)
        return True

    def submit(self, run: RunRecord) -> None:
        with self._lock:
            self._seen.add(run.id)
            self._active[run.id] = run
            self._finished[run.id] = threading.Event()
            self._futures[run.id] = self._pool.submit(self._execute, run)

    def executed(self, run_id: str) -> bool:
        """Whether this executor has executed (part of) the run."""
        with self._lock:
            return run_id in self._seen

    def finished(self, run_id: str) -> threading.Event | None:
        """Set when this process stops executing the run (ended, parked or released)."""
        with self._lock:
            return self._finished.get(run_id)

    def spawn(self, run_id: str) -> None:
        """Start a child run here if nobody holds it (best effort: workers may take it)."""
        if not self.stopping.is_set():
            self.claim(run_id=run_id)

    def _execute(self, run: RunRecord) -> None:
        try:
            # Settings as they are now (a process may change its environment between runs).
            settings = Settings.from_env()
            if run.road is Road.SNAPSHOT:
                SnapshotRoadRun(
                    self.store, run, self.worker_id, self.stopping, self.spawn, settings
                ).execute()
                return
            journal = StoreJournal(
                self.store,
                run,
                workspace=settings.home / "workspaces" / run.id,
                spawn=self.spawn,
                park_after=self.park_after,
            )
            execute_run(
                journal, worker_id=self.worker_id, stopping=self.stopping, on_context=self._track
            )
        except StoreUnavailableError as exc:
            # Giving the run back needs the store too; its lease expiring gives it back.
            log.warning(
                "run %s: the store is unreachable (%s); the run resumes when its lease expires",
                run.id,
                exc.reason,
            )
        except Exception as exc:
            log.exception("run %s: the executor failed", run.id)
            self._give_back(run, exc)
        finally:
            with self._lock:
                self._active.pop(run.id, None)
                self._contexts.pop(run.id, None)
                self._futures.pop(run.id, None)
                finished = self._finished.pop(run.id, None)
            if finished is not None:
                finished.set()

    def _give_back(self, run: RunRecord, exc: Exception) -> None:
        """After a failure of torpor's own (not the workflow's): retry elsewhere, or after
        three such failures in a row fail the run, rather than leave it to a lease that may
        be long."""
        message = f"{type(exc).__name__}: {exc}"
        try:
            if failures_in_a_row(self.store, run.id) + 1 >= MAX_FAILURES:
                self.store.update_run(
                    run.id,
                    run.epoch,
                    status=RunStatus.FAILED,
                    error=encode_error(exc),
                    entry=("failed", {"message": message}),
                )
            else:
                self.store.update_run(
                    run.id,
                    run.epoch,
                    status=RunStatus.QUEUED,
                    release=True,
                    entry=("executor_failed", {"message": message}),
                )
        except Exception:
            log.warning("run %s: could not give the run back", run.id, exc_info=True)

    def _track(self, ctx: WorkflowContext) -> None:
        with self._lock:
            self._contexts[ctx.run.id] = ctx

    def _renew_leases(self) -> None:
        while not self._closed.wait(self.lease_seconds / 3):
            with self._lock:
                runs = list(self._active.values())
            for run in runs:
                try:
                    cancel = self.store.renew_lease(
                        run.id, self.worker_id, run.epoch, self.lease_seconds
                    )
                except FencedError:
                    self._flag(run.id, fenced=True)
                    continue
                except StoreUnavailableError as exc:
                    log.warning("run %s: lease renewal failed (%s); retrying", run.id, exc.reason)
                    continue
                except Exception:
                    log.warning("run %s: lease renewal failed; retrying", run.id, exc_info=True)
                    continue
                if cancel:
                    self._flag(run.id, cancel=True)

    def _flag(self, run_id: str, *, fenced: bool = False, cancel: bool = False) -> None:
        with self._lock:
            ctx = self._contexts.get(run_id)
        if ctx is not None:
            ctx.fenced = ctx.fenced or fenced
            ctx.cancel_requested = ctx.cancel_requested or cancel

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the runs in flight; True if they all left in time."""
        with self._lock:
            futures = list(self._futures.values())
        _, pending = wait(futures, timeout)
        return not pending

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=False)
