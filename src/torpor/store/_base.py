"""The `Store` interface: runs, their context logs, events, timers, snapshots and leases."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from .._config import DEFAULT_MAX_PAYLOAD_BYTES
from .._errors import FencedError, TorporError
from .._model import Event, LogEntry, Road, RunRecord, RunStatus, SnapshotRecord, Timer

__all__ = ["Appended", "RunEndedError", "Store", "StoreNotFoundError", "encode_json"]

#: The statuses a run ends in: its status and output are final (only an operator's
#: `requeue_run` / `rollback_run`, or a fork, start a new timeline).
TERMINAL = tuple(s.value for s in RunStatus if s.terminal)


class RunEndedError(FencedError):
    """A worker's (or sandbox's) write to a run that has ended: refused, nothing changed.

    A `FencedError`: an ended run fences out every holder, so the paths that stop work
    on a lost lease stop here too.
    """

    def __init__(self, run_id: str, epoch: int, status: str, operation: str) -> None:
        TorporError.__init__(
            self,
            f"run {run_id} is {status}: cannot {operation}; an ended run's status, output "
            f"and log are final (`torpor resume {run_id}` or `torpor fork {run_id}` start a "
            "new timeline)",
        )
        self.run_id = run_id
        self.epoch = epoch
        self.current_epoch = epoch
        self.status = status
        self.operation = operation


class Appended(NamedTuple):
    """Where an append landed, and whether the run has been asked to cancel since."""

    seq: int
    cancel_requested: bool


class StoreNotFoundError(TorporError):
    """A command that only reads or acts on existing runs was pointed at a store that
    does not exist: it is not created (a mistyped URL would otherwise yield an empty one)."""

    def __init__(self, url: str, why: str) -> None:
        super().__init__(
            f"no torpor store at {url} ({why}); check TORPOR_DATABASE_URL, or create the "
            "store by starting a worker (`torpor worker`) or a run (`torpor run FILE:FUNC`)"
        )
        self.url = url
        self.why = why


def encode_json(value: Any, what: str) -> str:
    """Compact JSON for a stored value; a clear error for what JSON cannot hold."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TorporError(
            f"{what} is not JSON: {exc}; pass JSON-compatible values "
            "(dict, list, str, int, float, bool, None)"
        ) from None


class Store(ABC):
    """Durable state of torpor. One instance is safe to share between threads.

    Writes a worker makes for a run it holds pass that run's fencing ``epoch``; a write
    whose epoch is no longer the run's raises `FencedError` and changes nothing.
    """

    url: str
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES

    # -- runs ---------------------------------------------------------------------------

    @abstractmethod
    def create_run(
        self,
        workflow: str,
        *,
        road: Road = Road.REPLAY,
        input: Any = None,
        queue: str = "default",
        priority: int = 0,
        parent_id: str | None = None,
        forked_from: str | None = None,
        run_id: str | None = None,
        source: dict[str, str] | None = None,
        owner: str | None = None,
        lease_seconds: float = 30.0,
    ) -> RunRecord:
        """Record a new `queued` run and return it (``run_id`` chooses its id).

        With ``owner``, the run is created already claimed by that worker (``running``,
        epoch 1, attempt 1) under a lease of ``lease_seconds``: one write instead of two.
        """

    @abstractmethod
    def get_run(self, run_id: str) -> RunRecord:
        """The run with this id; `RunNotFoundError` if there is none."""

    @abstractmethod
    def list_runs(
        self, *, statuses: Iterable[RunStatus] | None = None, limit: int | None = None
    ) -> list[RunRecord]:
        """Runs, newest first, optionally only those with the given statuses."""

    @abstractmethod
    def cancel_run(self, run_id: str) -> RunRecord:
        """Cancel a run: at once if no worker holds it, else at its next step boundary."""

    @abstractmethod
    def claim_run(
        self,
        worker_id: str,
        lease_seconds: float,
        queues: Sequence[str] | None = None,
        *,
        run_id: str | None = None,
        queue_limits: Mapping[str, int] | None = None,
    ) -> RunRecord | None:
        """Take the most urgent runnable run (or this one) under a new lease and epoch.

        Returns None when nothing is runnable.

        Runnable: `queued`; `waiting`/`suspended` whose wake time has come; any non-final
        run whose lease expired (its worker died). Most urgent: highest priority, then
        oldest.

        ``queue_limits``: queue -> the most runs of that queue holding a live lease at once,
        across all workers (runs parked or suspended in a wait hold none).
        """

    @abstractmethod
    def renew_lease(self, run_id: str, worker_id: str, epoch: int, lease_seconds: float) -> bool:
        """Extend a held lease; `FencedError` if it was lost. True if cancel was requested."""

    @abstractmethod
    def update_run(
        self,
        run_id: str,
        epoch: int,
        *,
        status: RunStatus,
        output: Any = None,
        error: Any = None,
        wake_at: float | None = None,
        release: bool = False,
        entry: tuple[str, Any] | None = None,
    ) -> RunRecord:
        """Set a held run's status (and output/error/wake time); ``release`` drops the lease.

        ``entry`` (kind, payload) is appended to the log in the same transaction.
        Raises `FencedError` if ``epoch`` is no longer the run's, and `RunEndedError` (one)
        if the run has ended: a terminal status is final, whoever holds the epoch.
        """

    # -- the context log ----------------------------------------------------------------

    @abstractmethod
    def append(
        self,
        run_id: str,
        kind: str,
        payload: Any,
        *,
        expected_seq: int | None = None,
        epoch: int | None = None,
    ) -> int:
        """Append one entry atomically and return its seq (dense from 1).

        With ``expected_seq``, the entry must get exactly that seq: if another writer
        appended first, `LogConflictError` is raised and nothing is written.
        With ``epoch`` (a worker's or its sandbox's write), `FencedError` if the run was
        claimed since, `RunEndedError` if it has ended. Without one (an operator's note, a
        fork copying its parent's log), the entry is appended whatever the run's status.
        """

    @abstractmethod
    def append_owned(
        self,
        run_id: str,
        kind: str,
        payload: Any,
        *,
        expected_seq: int | None = None,
        epoch: int | None = None,
    ) -> Appended:
        """`append`, also telling the owner whether cancellation was requested."""

    @abstractmethod
    def read(self, run_id: str, after: int = 0, limit: int | None = None) -> list[LogEntry]:
        """Entries with seq > ``after``, in order, at most ``limit`` of them."""

    def follow(
        self, run_id: str, after: int = 0, *, poll: float = 0.05, stop_when_final: bool = False
    ) -> Iterator[LogEntry]:
        """Yield entries as they land, forever (or until the run ends, if asked)."""
        self.get_run(run_id)
        delay = poll
        while True:
            entries = self.read(run_id, after=after, limit=1000)
            for entry in entries:
                yield entry
                after = entry.seq
            if entries:
                delay = poll
                continue
            if stop_when_final and self.get_run(run_id).status.terminal:
                # A last read: entries may have landed between the read and the status check.
                for entry in self.read(run_id, after=after):
                    yield entry
                return
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- events, timers, snapshots --------------------------------------------------------

    @abstractmethod
    def send_event(self, run_id: str, name: str, payload: Any = None) -> Event:
        """Deliver a named event to a run, waking it if it waits; refused for ended runs."""

    @abstractmethod
    def consume_event(
        self, run_id: str, name: str, *, epoch: int, entry: dict[str, Any]
    ) -> Event | None:
        """Take the oldest undelivered event ``name`` of a run, if any, and log it.

        Atomically marks the event delivered and appends an ``event`` entry holding
        ``entry``'s fields, the event's name, id and payload.
        """

    @abstractmethod
    def wake_run(self, run_id: str) -> None:
        """Make a parked run (waiting or suspended, no lease) claimable now."""

    @abstractmethod
    def requeue_run(self, run_id: str, note: dict[str, Any] | None = None) -> RunRecord:
        """Queue a failed or cancelled run again (``torpor resume`` on the replay road),
        logging a ``resumed`` entry with ``note``'s fields."""

    @abstractmethod
    def rollback_run(self, run_id: str, to_seq: int, note: dict[str, Any]) -> RunRecord:
        """Queue a run again from an older point of its history (``torpor resume --from
        SNAPSHOT``): events it consumed after ``to_seq`` are delivered again, and a
        ``rollback`` entry with ``to_seq`` and ``note``'s fields is logged. Nothing is
        deleted. Refused (`RunStateError`) while a worker executes the run."""

    @abstractmethod
    def list_events(self, run_id: str) -> list[Event]:
        """Events sent to a run, oldest first."""

    @abstractmethod
    def add_timer(self, run_id: str, name: str, fire_at: float) -> Timer:
        """Record a durable wake-up time for a run."""

    @abstractmethod
    def list_timers(self, run_id: str) -> list[Timer]:
        """A run's timers, by firing time."""

    @abstractmethod
    def add_snapshot(self, record: SnapshotRecord, *, epoch: int | None = None) -> None:
        """List a snapshot whose chunks and manifest are already durable. With ``epoch``
        (a worker's claim), `FencedError` if the run has been claimed since: a worker that
        lost its lease cannot list a snapshot of its stale copy."""

    @abstractmethod
    def list_snapshots(self, run_id: str) -> list[SnapshotRecord]:
        """A run's snapshots, oldest first."""

    @abstractmethod
    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        """The listed snapshot with this id, None if there is none."""

    @abstractmethod
    def delete_snapshot(self, snapshot_id: str) -> bool:
        """Unlist a snapshot (its chunks are the snapshot store's to collect); False if it
        was not listed."""

    # -- housekeeping ---------------------------------------------------------------------

    @abstractmethod
    def schema_version(self) -> int:
        """The schema version recorded in the database."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
