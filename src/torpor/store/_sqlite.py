"""The embedded store: one SQLite file in WAL mode, shared by processes on one machine."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from .._config import DEFAULT_MAX_PAYLOAD_BYTES
from .._errors import StoreUnavailableError, TorporError
from ._base import StoreNotFoundError
from ._sql import SqlStore
from ._sql_records import Tx

__all__ = ["SQLiteStore", "sqlite_path"]

# Writers queue on SQLite's single write lock; wait this long before reporting it busy.
_BUSY_TIMEOUT_S = 60.0


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite://`` URL names: ``sqlite:///abs/path`` or ``sqlite://rel/path``."""
    if not url.startswith("sqlite://"):
        raise TorporError(f"not a sqlite URL: {url!r}")
    rest = url[len("sqlite://") :]
    if rest.startswith("//"):  # sqlite:////abs/path, as SQLAlchemy spells it
        rest = rest[1:]
    if not rest or rest == "/":
        raise TorporError(f"{url!r} names no file; use sqlite:///path/to/torpor.db")
    return Path(rest).expanduser().resolve()


class SQLiteStore(SqlStore):
    """`Store` on one SQLite file: WAL mode, one connection per thread and process.

    Writes take SQLite's write lock at the start of the transaction (``BEGIN IMMEDIATE``),
    so two processes never interleave a read-modify-write; with ``synchronous=FULL`` (the
    default) a committed write survives power loss, with ``NORMAL`` only process crashes.
    """

    ident_type = "INTEGER PRIMARY KEY AUTOINCREMENT"

    def __init__(
        self,
        url: str,
        *,
        synchronous: str = "FULL",
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        create: bool = True,
    ) -> None:
        self.url = url
        self.path = sqlite_path(url)
        if not create and not self.path.is_file():
            raise StoreNotFoundError(url, f"{self.path} does not exist")
        self.synchronous = synchronous
        self.max_payload_bytes = max_payload_bytes
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._write() as tx:
                self._migrate(tx)
        except sqlite3.Error as exc:
            raise StoreUnavailableError(url, str(exc)) from None
        except OSError as exc:
            raise StoreUnavailableError(url, exc.strerror or str(exc)) from None

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        conn = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        self._local.conn = conn
        self._local.pid = os.getpid()
        with self._all_lock:
            self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[Tx]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[Tx]:
        yield self._conn()

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            with suppress(sqlite3.Error):  # closing is best effort
                conn.close()
        self._local = threading.local()
