"""DBOS Transact on SQLite or PostgreSQL: per-step overhead and workflows/second.

Run with .bench-venv's Python (bench/peers/setup.sh makes it). Prints one JSON object on stdout
(see _peer.Result), progress on stderr. Measured in-process, as an application would use DBOS:
  * one workflow calling --steps trivial @DBOS.step functions, timed from the call to its
    result, and an empty workflow timed the same way; per-step overhead is their difference
    divided by the steps;
  * --workflows two-step workflows called one after the other (each call starts the workflow
    and returns its result), as workflows/second.
"""

from __future__ import annotations

import sqlite3
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import _peer

_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def _prepare_sqlite(path: Path, journal_mode: str, synchronous: str) -> None:
    """Put DBOS's SQLite file in the compared durability setting.

    DBOS sets only busy_timeout and foreign_keys on its connections, leaving SQLite's defaults
    (journal_mode=DELETE, synchronous=FULL). journal_mode=WAL persists in the file, so setting
    it before DBOS opens the file is enough; synchronous is per connection, so every SQLite
    connection SQLAlchemy opens gets it from a listener on the Engine class.
    """
    import sqlalchemy as sa
    from sqlalchemy import event

    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.close()

    def set_synchronous(dbapi_conn: Any, _record: Any) -> None:
        if isinstance(dbapi_conn, sqlite3.Connection):
            dbapi_conn.execute(f"PRAGMA synchronous={synchronous}")

    event.listen(sa.Engine, "connect", set_synchronous)


def _durability(engine: Any, backend: str) -> str:
    """What is in effect on a connection from DBOS's own pool, not what was asked for."""
    with engine.connect() as conn:
        if backend == "sqlite":
            journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            return f"sqlite journal_mode={journal} synchronous={_SYNCHRONOUS.get(sync, sync)}"
        settings = ("fsync", "synchronous_commit", "wal_sync_method", "full_page_writes")
        shown = [f"{s}={conn.exec_driver_sql(f'SHOW {s}').scalar()}" for s in settings]
        return "postgres " + " ".join(shown)


def _measure(result: _peer.Result, args: Any, workdir: Path) -> None:
    from dbos import DBOS, DBOSConfig

    result.version = {"dbos": version("dbos"), "sqlalchemy": version("sqlalchemy")}
    if args.backend == "sqlite":
        db = workdir / "dbos_sys.sqlite"
        _prepare_sqlite(db, args.journal_mode, args.synchronous)
        url = f"sqlite:///{db}"
    else:
        if not args.url:
            raise ValueError("--url is required for --backend postgres")
        url = args.url  # DBOS creates the database if it does not exist
    # Decorated before launch: DBOS registers them by name.
    steps_workflow = _peer.steps_workflow(DBOS.step(), DBOS.workflow())
    config: DBOSConfig = {
        "name": "torpor-bench",
        "system_database_url": url,
        "log_level": "WARNING",
    }
    dbos = DBOS(config=config)
    DBOS.launch()
    try:
        result.durability = _durability(dbos._sys_db.engine, args.backend)
        _peer.progress(f"dbos {result.version['dbos']} on {args.backend}: {result.durability}")
        # Warm-up inside: migrations done, pool filled, code paths hot before any timing.
        _peer.measure(result, args, steps_workflow, "dbos")
    finally:
        DBOS.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = _peer.make_parser(__doc__.splitlines()[0])
    return _peer.main(parser, argv, "dbos", "step", _measure)


if __name__ == "__main__":
    sys.exit(main())
