"""The store on PostgreSQL (psycopg 3 with a connection pool), for many workers."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import lru_cache
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from .._config import DEFAULT_MAX_PAYLOAD_BYTES, redact_url
from .._errors import StoreUnavailableError
from ._base import Appended, StoreNotFoundError, encode_json
from ._sql import SqlStore
from ._sql_records import Cursor, Tx, bump_last_seq

__all__ = ["PostgresStore"]

_CONNECT_TIMEOUT_S = 5
# Any 64-bit number works: it only has to be the same for every torpor opening the database.
_MIGRATION_LOCK_KEY = 0x746F72706F72


@lru_cache(maxsize=256)
def _to_pyformat(sql: str) -> str:
    """Our statements use ``?``; psycopg wants ``%s`` (and a literal ``%`` doubled)."""
    return re.sub(r"\?", "%s", sql.replace("%", "%%"))


def _connection_lost(exc: psycopg.OperationalError) -> bool:
    """Whether the server went away (restart, failover, network cut): no SQLSTATE (the
    client lost the connection), class 08 (connection exception) or 57P01-57P03 (shutdown,
    crash, cannot connect now)."""
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


class _PgTx:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self._conn.execute(_to_pyformat(sql), params)


class PostgresStore(SqlStore):
    """`Store` on PostgreSQL: claims use ``FOR UPDATE SKIP LOCKED``; each append locks
    only its own run's row, so workers on different runs never wait for each other."""

    ident_type = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    claim_lock = "FOR UPDATE SKIP LOCKED"
    row_lock = "FOR UPDATE"

    def _serialize_limited_claims(self, tx: Tx) -> None:
        # Counting then claiming is racy between claimers: a transaction-scoped advisory
        # lock (an arbitrary constant key) makes claims under queue limits take turns.
        tx.execute("SELECT pg_advisory_xact_lock(2026112201)")

    def __init__(
        self,
        url: str,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        pool_size: int = 8,
        create: bool = True,
    ) -> None:
        self.url = url
        self.max_payload_bytes = max_payload_bytes
        shown = redact_url(url)
        # Connect once by hand first: the pool would only say "timed out", and the user
        # needs the server's reason (refused, bad password, unknown database).
        try:
            with psycopg.connect(url, connect_timeout=_CONNECT_TIMEOUT_S) as conn:
                if not create:
                    found = conn.execute("SELECT to_regclass('torpor_schema')").fetchone()
                    if found is None or found[0] is None:
                        raise StoreNotFoundError(shown, "the database has no torpor tables")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
                self._migrate(_PgTx(conn))
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailableError(shown, reason) from None
        self._pool: ConnectionPool[Any] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"connect_timeout": _CONNECT_TIMEOUT_S, "autocommit": True},
            open=False,
            name="torpor",
        )
        try:
            self._pool.open(wait=True, timeout=_CONNECT_TIMEOUT_S * 2)
        except PoolTimeout as exc:
            raise StoreUnavailableError(shown, str(exc)) from None

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; losing the server (a restart, a failover, a network cut)
        raises `StoreUnavailableError`, which workers treat as "retry later"."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            if isinstance(exc, psycopg.OperationalError) and not _connection_lost(exc):
                raise  # a deadlock, a timeout, a full disk: an error, not an outage
            # After a server restart every idle pooled connection is dead: drop them all
            # now rather than let each fail one more call.
            with suppress(Exception):
                self._pool.check()
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailableError(redact_url(self.url), reason) from exc

    @contextmanager
    def _write(self) -> Iterator[Tx]:
        with self._connection() as conn, conn.transaction():
            yield _PgTx(conn)

    @contextmanager
    def _read(self) -> Iterator[Tx]:
        # Autocommit: each read is one round trip, without BEGIN and COMMIT around it.
        with self._connection() as conn:
            yield _PgTx(conn)

    def append_owned(
        self,
        run_id: str,
        kind: str,
        payload: Any,
        *,
        expected_seq: int | None = None,
        epoch: int | None = None,
    ) -> Appended:
        # The hot path: one statement, one round trip, its own transaction (autocommit).
        text = encode_json(payload, f"run {run_id}: {kind} payload")
        self._check_size(run_id, kind, text)
        now = time.time()
        bump, params = bump_last_seq(run_id, expected_seq, epoch, now)
        sql = (
            f"WITH bumped AS ({bump}), added AS (INSERT INTO torpor_log (run_id, seq, kind, "
            "payload, created_at) SELECT ?, last_seq, ?, ?, ? FROM bumped RETURNING seq) "
            "SELECT added.seq, bumped.cancel_requested FROM added, bumped"
        )
        with self._connection() as conn:
            tx = _PgTx(conn)
            row = tx.execute(sql, [*params, run_id, kind, text, now]).fetchone()
            if row is None:
                self._append_refused(tx, run_id, kind, expected_seq, epoch)
        return Appended(int(row[0]), bool(row[1]))

    def close(self) -> None:
        self._pool.close()
