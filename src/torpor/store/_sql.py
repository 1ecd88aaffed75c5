"""The store over SQL: runs, their claims and leases, and their state changes, on top of
`SqlRecords` (transactions, schema, log, events, timers, snapshot records). `SQLiteStore` and
`PostgresStore` subclass `SqlStore` and bring the connections.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NoReturn

from .._errors import FencedError, RunNotFoundError, RunStateError, TorporError
from .._model import Road, RunRecord, RunStatus, new_run_id
from ._base import TERMINAL, RunEndedError, encode_json
from ._sql_records import PARKED, RUN_COLUMNS, SqlRecords, Tx, run_from_row

__all__ = ["SqlStore"]


class SqlStore(SqlRecords):
    """`Store` implemented with portable SQL; subclasses bring the connections."""

    claim_lock: str = ""

    # -- runs -----------------------------------------------------------------------------

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
        input_json = encode_json(input, f"input of workflow {workflow}")
        self._check_size(run_id or "(new run)", "input", input_json)
        now = time.time()
        for _ in range(5):
            rid = run_id or new_run_id()
            with self._write() as tx:
                if tx.execute("SELECT 1 FROM torpor_runs WHERE id = ?", (rid,)).fetchone():
                    if run_id is not None:
                        raise TorporError(f"a run with id {run_id!r} already exists")
                    continue  # a 65-bit collision: draw again
                row = tx.execute(
                    "INSERT INTO torpor_runs (id, workflow, road, status, input, queue, "
                    "priority, parent_id, forked_from, created_at, updated_at, source, "
                    "lease_owner, lease_expires_at, epoch, attempt) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    f"RETURNING {RUN_COLUMNS}",
                    (
                        rid,
                        workflow,
                        Road(road).value,
                        (RunStatus.QUEUED if owner is None else RunStatus.RUNNING).value,
                        input_json,
                        queue,
                        priority,
                        parent_id,
                        forked_from,
                        now,
                        now,
                        None if source is None else encode_json(source, "source"),
                        owner,
                        None if owner is None else now + lease_seconds,
                        0 if owner is None else 1,
                        0 if owner is None else 1,
                    ),
                ).fetchone()
                return run_from_row(row)
        raise TorporError("could not draw a fresh run id after 5 tries")  # pragma: no cover

    def get_run(self, run_id: str) -> RunRecord:
        with self._read() as tx:
            return self._get_run(tx, run_id)

    def list_runs(
        self, *, statuses: Iterable[RunStatus] | None = None, limit: int | None = None
    ) -> list[RunRecord]:
        sql = f"SELECT {RUN_COLUMNS} FROM torpor_runs"
        params: list[Any] = []
        if statuses is not None:
            wanted = [RunStatus(s).value for s in statuses]
            if not wanted:
                return []
            sql += f" WHERE status IN ({', '.join('?' * len(wanted))})"
            params.extend(wanted)
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read() as tx:
            return [run_from_row(r) for r in tx.execute(sql, params).fetchall()]

    def cancel_run(self, run_id: str) -> RunRecord:
        now = time.time()
        with self._write() as tx:
            run = self._get_run(tx, run_id)
            if run.status.terminal:
                raise RunStateError(run_id, run.status.value, "cancel it")
            held = run.lease_owner is not None and (run.lease_expires_at or 0) > now
            if held:
                # A worker is executing it: it stops at its next step boundary.
                tx.execute(
                    "UPDATE torpor_runs SET cancel_requested = 1, updated_at = ? WHERE id = ?",
                    (now, run_id),
                )
                self._append_in(tx, run_id, "cancel_requested", "{}", None, None, now)
            else:
                tx.execute(
                    "UPDATE torpor_runs SET status = ?, cancel_requested = 1, lease_owner = NULL, "
                    "lease_expires_at = NULL, wake_at = NULL, updated_at = ? WHERE id = ?",
                    (RunStatus.CANCELLED.value, now, run_id),
                )
                self._append_in(tx, run_id, "cancelled", "{}", None, None, now)
            return self._get_run(tx, run_id)

    def claim_run(
        self,
        worker_id: str,
        lease_seconds: float,
        queues: Sequence[str] | None = None,
        *,
        run_id: str | None = None,
        queue_limits: Mapping[str, int] | None = None,
    ) -> RunRecord | None:
        now = time.time()
        sql = (
            "SELECT id FROM torpor_runs WHERE ("
            " status = ?"
            " OR (status IN (?, ?) AND lease_owner IS NULL AND wake_at <= ?)"
            " OR (status IN (?, ?) AND lease_owner IS NOT NULL AND lease_expires_at < ?))"
        )
        params: list[Any] = [RunStatus.QUEUED.value, *PARKED, now]
        params += [RunStatus.RUNNING.value, RunStatus.WAITING.value, now]
        if queues:
            sql += f" AND queue IN ({', '.join('?' * len(queues))})"
            params.extend(queues)
        if run_id is not None:
            sql += " AND id = ?"
            params.append(run_id)
        sql += f" ORDER BY priority DESC, created_at LIMIT 1 {self.claim_lock}"
        with self._write() as tx:
            if queue_limits:
                full = self._full_queues(tx, queue_limits, now)
                if full:
                    where, _, rest = sql.partition(" ORDER BY")
                    sql = f"{where} AND queue NOT IN ({', '.join('?' * len(full))}) ORDER BY{rest}"
                    params.extend(full)
            found = tx.execute(sql, params).fetchone()
            if found is None:
                return None
            row = tx.execute(
                "UPDATE torpor_runs SET status = ?, lease_owner = ?, lease_expires_at = ?, "
                "epoch = epoch + 1, attempt = attempt + 1, wake_at = NULL, updated_at = ? "
                f"WHERE id = ? RETURNING {RUN_COLUMNS}",
                (RunStatus.RUNNING.value, worker_id, now + lease_seconds, now, found[0]),
            ).fetchone()
            return run_from_row(row)

    def _full_queues(self, tx: Tx, limits: Mapping[str, int], now: float) -> list[str]:
        """The limited queues whose runs hold as many live leases as their limit."""
        self._serialize_limited_claims(tx)
        names = sorted(limits)
        rows = tx.execute(
            "SELECT queue, COUNT(*) FROM torpor_runs WHERE lease_owner IS NOT NULL "
            f"AND lease_expires_at >= ? AND queue IN ({', '.join('?' * len(names))}) "
            "GROUP BY queue",
            [now, *names],
        ).fetchall()
        held = {row[0]: int(row[1]) for row in rows}
        return [name for name in names if held.get(name, 0) >= limits[name]]

    def _serialize_limited_claims(self, tx: Tx) -> None:
        """Claims under queue limits count and claim in one step, one claimer at a time
        (SQLite's write lock already does that)."""

    def renew_lease(self, run_id: str, worker_id: str, epoch: int, lease_seconds: float) -> bool:
        now = time.time()
        with self._write() as tx:
            row = tx.execute(
                "UPDATE torpor_runs SET lease_expires_at = ? "
                "WHERE id = ? AND epoch = ? AND lease_owner = ? RETURNING cancel_requested",
                (now + lease_seconds, run_id, epoch, worker_id),
            ).fetchone()
            if row is None:
                self._raise_fenced(tx, run_id, epoch, "renew its lease")
            return bool(row[0])

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
        status = RunStatus(status)
        output_json = None if output is None else encode_json(output, f"output of run {run_id}")
        if output_json is not None:
            self._check_size(run_id, "output", output_json)
        error_json = None if error is None else encode_json(error, f"error of run {run_id}")
        now = time.time()
        sets = "status = ?, output = ?, error = ?, wake_at = ?, updated_at = ?"
        if release or status.terminal:
            sets += ", lease_owner = NULL, lease_expires_at = NULL"
        ended = ", ".join("?" * len(TERMINAL))
        with self._write() as tx:
            # The WHERE refuses an ended run in the same statement that would change it: no
            # holder of the epoch (a sandbox forging its end, a worker finishing late)
            # changes a final status or output.
            row = tx.execute(
                f"UPDATE torpor_runs SET {sets} WHERE id = ? AND epoch = ? "
                f"AND status NOT IN ({ended}) RETURNING {RUN_COLUMNS}",
                (status.value, output_json, error_json, wake_at, now, run_id, epoch, *TERMINAL),
            ).fetchone()
            if row is None:
                self._raise_fenced(tx, run_id, epoch, f"set its status to {status.value}")
            if entry is not None:
                kind, payload = entry
                text = encode_json(payload, kind)
                self._append_in(tx, run_id, kind, text, None, epoch, now, ended_ok=True)
                return self._get_run(tx, run_id)
            return run_from_row(row)

    def _raise_fenced(self, tx: Tx, run_id: str, epoch: int, operation: str) -> NoReturn:
        """Say why a held run's row took no write: unknown, claimed since, or ended."""
        current = self._get_run(tx, run_id)  # raises RunNotFoundError
        if current.epoch == epoch and current.status.terminal:
            raise RunEndedError(run_id, epoch, current.status.value, operation)
        raise FencedError(run_id, epoch, current.epoch)

    # -- resuming and rolling back --------------------------------------------------------

    def requeue_run(self, run_id: str, note: dict[str, Any] | None = None) -> RunRecord:
        now = time.time()
        with self._write() as tx:
            run = self._get_run(tx, run_id)
            if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED):
                raise RunStateError(
                    run_id, run.status.value, "resume it (only failed or cancelled runs resume)"
                )
            # A new epoch, as a rollback's: a holder of the ended timeline's epoch (a late
            # worker, its sandbox) cannot write into the new one before it is claimed.
            tx.execute(
                "UPDATE torpor_runs SET status = ?, error = NULL, cancel_requested = 0, "
                "lease_owner = NULL, lease_expires_at = NULL, wake_at = NULL, "
                "epoch = epoch + 1, updated_at = ? WHERE id = ?",
                (RunStatus.QUEUED.value, now, run_id),
            )
            self._append_in(
                tx,
                run_id,
                "resumed",
                encode_json({**(note or {}), "from": run.status.value}, "resumed"),
                None,
                None,
                now,
            )
            return self._get_run(tx, run_id)

    def rollback_run(self, run_id: str, to_seq: int, note: dict[str, Any]) -> RunRecord:
        now = time.time()
        with self._write() as tx:
            row = tx.execute(
                f"SELECT {RUN_COLUMNS} FROM torpor_runs WHERE id = ? {self.row_lock}", (run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFoundError(run_id)
            run = run_from_row(row)
            if run.status in (RunStatus.RUNNING, RunStatus.WAITING) or (
                run.lease_owner is not None and (run.lease_expires_at or 0) > now
            ):
                raise RunStateError(
                    run_id,
                    run.status.value,
                    "roll it back (a worker executes it: cancel it, or wait until it is "
                    "suspended or ended)",
                )
            if not 0 <= to_seq <= run.last_seq:
                raise ValueError(f"to_seq {to_seq} is outside {run_id}'s log (0..{run.last_seq})")
            # Events the run consumed since are delivered again; torpor's own requests
            # (names starting "torpor.", e.g. a checkpoint request) are not repeated.
            tx.execute(
                "UPDATE torpor_events SET consumed_seq = NULL "
                "WHERE run_id = ? AND consumed_seq > ? AND name NOT LIKE 'torpor.%'",
                (run_id, to_seq),
            )
            # A new epoch: whoever held the run before cannot write into the new timeline.
            tx.execute(
                "UPDATE torpor_runs SET status = ?, output = NULL, error = NULL, "
                "cancel_requested = 0, lease_owner = NULL, lease_expires_at = NULL, "
                "wake_at = NULL, epoch = epoch + 1, updated_at = ? WHERE id = ?",
                (RunStatus.QUEUED.value, now, run_id),
            )
            payload = {**note, "to_seq": to_seq, "from": run.status.value}
            self._append_in(
                tx, run_id, "rollback", encode_json(payload, "rollback"), None, None, now
            )
            return self._get_run(tx, run_id)
