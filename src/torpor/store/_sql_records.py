"""The SQL store's foundation, shared by SQLite and PostgreSQL: the seam a dialect fills in,
the schema, and what a run accumulates (its context log, events, timers, snapshot records).

Statements are written once with ``?`` placeholders; a dialect supplies connections and
transactions (`SqlRecords._write` / `SqlRecords._read`) and the row-locking clauses.
Every log append bumps ``torpor_runs.last_seq`` in the same transaction as the insert: the
run's row is the per-run lock, so appends to one run serialize and get dense seqs while
appends to different runs never wait for each other (on PostgreSQL).
"""

from __future__ import annotations

import json
import time
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, NoReturn, Protocol

from .._errors import (
    FencedError,
    LogConflictError,
    PayloadTooLargeError,
    RunNotFoundError,
    RunStateError,
    TorporError,
)
from .._model import Event, LogEntry, Road, RunRecord, RunStatus, SnapshotRecord, Timer
from ._base import TERMINAL, Appended, RunEndedError, Store, encode_json
from ._schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["PARKED", "RUN_COLUMNS", "Cursor", "SqlRecords", "Tx", "bump_last_seq", "run_from_row"]

RUN_COLUMNS = (
    "id, workflow, road, status, input, output, error, attempt, queue, priority, parent_id, "
    "forked_from, created_at, updated_at, lease_owner, lease_expires_at, epoch, last_seq, "
    "cancel_requested, wake_at, source"
)
_SNAPSHOT_COLUMNS = (
    "id, run_id, seq, manifest, created_at, raw_bytes, stored_bytes, chunks, new_chunks, "
    "dump_ms, store_ms"
)
PARKED = (RunStatus.WAITING.value, RunStatus.SUSPENDED.value)


class Cursor(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Tx(Protocol):
    """A connection inside a transaction (or autocommit read), with ``?`` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def run_from_row(row: Sequence[Any]) -> RunRecord:
    """The run in a row of ``SELECT {RUN_COLUMNS}``."""
    return RunRecord(
        id=row[0],
        workflow=row[1],
        road=Road(row[2]),
        status=RunStatus(row[3]),
        input=_loads(row[4]),
        output=_loads(row[5]),
        error=_loads(row[6]),
        attempt=int(row[7]),
        queue=row[8],
        priority=int(row[9]),
        parent_id=row[10],
        forked_from=row[11],
        created_at=float(row[12]),
        updated_at=float(row[13]),
        lease_owner=row[14],
        lease_expires_at=None if row[15] is None else float(row[15]),
        epoch=int(row[16]),
        last_seq=int(row[17]),
        cancel_requested=bool(row[18]),
        wake_at=None if row[19] is None else float(row[19]),
        source=_loads(row[20]),
    )


def _snapshot_from_row(row: Sequence[Any]) -> SnapshotRecord:
    return SnapshotRecord(
        id=row[0],
        run_id=row[1],
        seq=int(row[2]),
        manifest=row[3],
        created_at=float(row[4]),
        raw_bytes=int(row[5]),
        stored_bytes=int(row[6]),
        chunks=int(row[7]),
        new_chunks=int(row[8]),
        dump_ms=float(row[9]),
        store_ms=float(row[10]),
    )


def bump_last_seq(
    run_id: str, expected_seq: int | None, epoch: int | None, now: float, *, ended_ok: bool = False
) -> tuple[str, list[Any]]:
    """The UPDATE that takes the next seq of a run's log (and checks seq and epoch).

    A write under an ``epoch`` (a worker's or its sandbox's) matches no row once the run
    has ended, unless ``ended_ok`` (the entry recording the end, in the same transaction).
    """
    sql = "UPDATE torpor_runs SET last_seq = last_seq + 1, updated_at = ? WHERE id = ?"
    params: list[Any] = [now, run_id]
    if expected_seq is not None:
        sql += " AND last_seq = ?"
        params.append(expected_seq - 1)
    if epoch is not None:
        sql += " AND epoch = ?"
        params.append(epoch)
        if not ended_ok:
            sql += f" AND status NOT IN ({', '.join('?' * len(TERMINAL))})"
            params.extend(TERMINAL)
    return sql + " RETURNING last_seq, cancel_requested", params


class SqlRecords(Store):
    """The part of `Store` every other part builds on, in portable SQL: transactions, the
    schema, run lookups, the context log, events, timers and snapshot records. `SqlStore`
    adds runs, claims and leases; subclasses of it bring the connections."""

    ident_type: str = ""
    row_lock: str = ""

    @abstractmethod
    def _write(self) -> AbstractContextManager[Tx]:
        """A transaction that takes the write lock early (SQLite) and commits on success."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Tx]:
        """A connection for consistent reads."""

    # -- schema ---------------------------------------------------------------------------

    def _migrate(self, tx: Tx) -> None:
        """Apply missing migrations; the caller holds the database's migration lock."""
        from .._errors import SchemaVersionError

        tx.execute("CREATE TABLE IF NOT EXISTS torpor_schema (version INTEGER NOT NULL)")
        row = tx.execute("SELECT MAX(version) FROM torpor_schema").fetchone()
        current = int(row[0]) if row and row[0] is not None else 0
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(self.url, current, SCHEMA_VERSION)
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                tx.execute(statement.replace("{ident}", self.ident_type))
            tx.execute("INSERT INTO torpor_schema (version) VALUES (?)", (version,))

    def schema_version(self) -> int:
        with self._read() as tx:
            row = tx.execute("SELECT MAX(version) FROM torpor_schema").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # -- a run's row, as every part reads it ----------------------------------------------

    def _get_run(self, tx: Tx, run_id: str) -> RunRecord:
        row = tx.execute(f"SELECT {RUN_COLUMNS} FROM torpor_runs WHERE id = ?", (run_id,))
        found = row.fetchone()
        if found is None:
            raise RunNotFoundError(run_id)
        return run_from_row(found)

    # -- the context log ------------------------------------------------------------------

    def _check_size(self, run_id: str, kind: str, text: str) -> None:
        size = len(text.encode("utf-8"))
        if size > self.max_payload_bytes:
            raise PayloadTooLargeError(run_id, kind, size, self.max_payload_bytes)

    def append(
        self,
        run_id: str,
        kind: str,
        payload: Any,
        *,
        expected_seq: int | None = None,
        epoch: int | None = None,
    ) -> int:
        return self.append_owned(run_id, kind, payload, expected_seq=expected_seq, epoch=epoch).seq

    def append_owned(
        self,
        run_id: str,
        kind: str,
        payload: Any,
        *,
        expected_seq: int | None = None,
        epoch: int | None = None,
    ) -> Appended:
        text = encode_json(payload, f"run {run_id}: {kind} payload")
        self._check_size(run_id, kind, text)
        with self._write() as tx:
            return self._append_in(tx, run_id, kind, text, expected_seq, epoch, time.time())

    def _append_in(
        self,
        tx: Tx,
        run_id: str,
        kind: str,
        text: str,
        expected_seq: int | None,
        epoch: int | None,
        now: float,
        *,
        ended_ok: bool = False,
    ) -> Appended:
        """Append already-encoded JSON ``text`` inside the caller's transaction.

        Returns the new seq and whether cancellation of the run has been requested.
        ``ended_ok``: the run may have ended (the entry that records its end).
        """
        bump, params = bump_last_seq(run_id, expected_seq, epoch, now, ended_ok=ended_ok)
        row = tx.execute(bump, params).fetchone()
        if row is None:
            self._append_refused(tx, run_id, kind, expected_seq, epoch)
        seq = int(row[0])
        tx.execute(
            "INSERT INTO torpor_log (run_id, seq, kind, payload, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (run_id, seq, kind, text, now),
        )
        return Appended(seq, bool(row[1]))

    def _append_refused(
        self, tx: Tx, run_id: str, kind: str, expected_seq: int | None, epoch: int | None
    ) -> NoReturn:
        """Say why the run's row did not take the append: unknown, fenced, ended, or moved
        on."""
        current = self._get_run(tx, run_id)
        if epoch is not None and current.epoch != epoch:
            raise FencedError(run_id, epoch, current.epoch)
        if epoch is not None and current.status.terminal:
            raise RunEndedError(run_id, epoch, current.status.value, f"append {kind!r} to its log")
        raise LogConflictError(run_id, int(expected_seq or 0), current.last_seq + 1)

    def read(self, run_id: str, after: int = 0, limit: int | None = None) -> list[LogEntry]:
        sql = (
            "SELECT seq, kind, payload, created_at FROM torpor_log "
            "WHERE run_id = ? AND seq > ? ORDER BY seq"
        )
        params: list[Any] = [run_id, after]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._read() as tx:
            rows = tx.execute(sql, params).fetchall()
            if not rows:
                self._get_run(tx, run_id)  # an unknown run is an error, not an empty log
        return [LogEntry(run_id, int(r[0]), r[1], json.loads(r[2]), float(r[3])) for r in rows]

    # -- events, timers, snapshots --------------------------------------------------------

    def send_event(self, run_id: str, name: str, payload: Any = None) -> Event:
        if not name:
            raise TorporError("an event needs a name")
        text = encode_json(payload, f"event {name!r} payload")
        self._check_size(run_id, f"event {name!r}", text)
        now = time.time()
        with self._write() as tx:
            run = self._get_run(tx, run_id)
            if run.status.terminal:
                raise RunStateError(run_id, run.status.value, f"deliver event {name!r}")
            row = tx.execute(
                "INSERT INTO torpor_events (run_id, name, payload, created_at) "
                "VALUES (?, ?, ?, ?) RETURNING id",
                (run_id, name, text, now),
            ).fetchone()
            # A parked run re-checks its wait: the event may be the one it waits for.
            tx.execute(
                "UPDATE torpor_runs SET wake_at = ?, updated_at = ? "
                "WHERE id = ? AND status IN (?, ?)",
                (now, now, run_id, *PARKED),
            )
        return Event(int(row[0]), run_id, name, payload, now, None)

    def consume_event(
        self, run_id: str, name: str, *, epoch: int, entry: dict[str, Any]
    ) -> Event | None:
        now = time.time()
        with self._write() as tx:
            row = tx.execute(
                "SELECT id, payload, created_at FROM torpor_events "
                "WHERE run_id = ? AND name = ? AND consumed_seq IS NULL "
                f"ORDER BY id LIMIT 1 {self.row_lock}",
                (run_id, name),
            ).fetchone()
            if row is None:
                return None
            payload = json.loads(row[1])
            text = encode_json(
                {**entry, "name": name, "event_id": int(row[0]), "payload": payload}, "event"
            )
            seq = self._append_in(tx, run_id, "event", text, None, epoch, now).seq
            tx.execute("UPDATE torpor_events SET consumed_seq = ? WHERE id = ?", (seq, row[0]))
        return Event(int(row[0]), run_id, name, payload, float(row[2]), seq)

    def wake_run(self, run_id: str) -> None:
        now = time.time()
        with self._write() as tx:
            tx.execute(
                "UPDATE torpor_runs SET wake_at = ?, updated_at = ? "
                "WHERE id = ? AND status IN (?, ?) AND lease_owner IS NULL",
                (now, now, run_id, *PARKED),
            )

    def list_events(self, run_id: str) -> list[Event]:
        with self._read() as tx:
            self._get_run(tx, run_id)
            rows = tx.execute(
                "SELECT id, run_id, name, payload, created_at, consumed_seq FROM torpor_events "
                "WHERE run_id = ? ORDER BY id",
                (run_id,),
            ).fetchall()
        return [
            Event(int(r[0]), r[1], r[2], json.loads(r[3]), float(r[4]), r[5] and int(r[5]))
            for r in rows
        ]

    def add_timer(self, run_id: str, name: str, fire_at: float) -> Timer:
        with self._write() as tx:
            self._get_run(tx, run_id)
            row = tx.execute(
                "INSERT INTO torpor_timers (run_id, name, fire_at) VALUES (?, ?, ?) RETURNING id",
                (run_id, name, fire_at),
            ).fetchone()
        return Timer(int(row[0]), run_id, name, fire_at, False)

    def list_timers(self, run_id: str) -> list[Timer]:
        with self._read() as tx:
            rows = tx.execute(
                "SELECT id, run_id, name, fire_at, fired FROM torpor_timers "
                "WHERE run_id = ? ORDER BY fire_at, id",
                (run_id,),
            ).fetchall()
        return [Timer(int(r[0]), r[1], r[2], float(r[3]), bool(r[4])) for r in rows]

    def add_snapshot(self, record: SnapshotRecord, *, epoch: int | None = None) -> None:
        with self._write() as tx:
            row = tx.execute(
                f"SELECT epoch FROM torpor_runs WHERE id = ? {self.row_lock}", (record.run_id,)
            ).fetchone()
            if row is None:
                raise RunNotFoundError(record.run_id)
            if epoch is not None and int(row[0]) != epoch:
                raise FencedError(record.run_id, epoch, int(row[0]))
            tx.execute(
                f"INSERT INTO torpor_snapshots ({_SNAPSHOT_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.run_id,
                    record.seq,
                    record.manifest,
                    record.created_at,
                    record.raw_bytes,
                    record.stored_bytes,
                    record.chunks,
                    record.new_chunks,
                    record.dump_ms,
                    record.store_ms,
                ),
            )

    def get_snapshot(self, snapshot_id: str) -> SnapshotRecord | None:
        with self._read() as tx:
            row = tx.execute(
                f"SELECT {_SNAPSHOT_COLUMNS} FROM torpor_snapshots WHERE id = ?", (snapshot_id,)
            ).fetchone()
        return None if row is None else _snapshot_from_row(row)

    def delete_snapshot(self, snapshot_id: str) -> bool:
        with self._write() as tx:
            row = tx.execute(
                "DELETE FROM torpor_snapshots WHERE id = ? RETURNING id", (snapshot_id,)
            ).fetchone()
        return row is not None

    def list_snapshots(self, run_id: str) -> list[SnapshotRecord]:
        with self._read() as tx:
            self._get_run(tx, run_id)
            rows = tx.execute(
                f"SELECT {_SNAPSHOT_COLUMNS} FROM torpor_snapshots "
                "WHERE run_id = ? ORDER BY seq, created_at",
                (run_id,),
            ).fetchall()
        return [_snapshot_from_row(r) for r in rows]
