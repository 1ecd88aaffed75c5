"""The store's tables, as numbered migrations shared by SQLite and PostgreSQL.

A migration is a list of statements. ``{ident}`` stands for the dialect's auto-increment
primary key column type; everything else is SQL both databases accept. Migrations only
ever get appended: a database records the highest version applied, and a torpor that finds
a higher version than it knows refuses to open it.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

MIGRATIONS: list[list[str]] = [
    # 1: runs, the context log, events, timers, snapshots.
    [
        """
        CREATE TABLE torpor_runs (
            id               TEXT PRIMARY KEY,
            workflow         TEXT NOT NULL,
            road             TEXT NOT NULL,
            status           TEXT NOT NULL,
            input            TEXT,
            output           TEXT,
            error            TEXT,
            attempt          INTEGER NOT NULL DEFAULT 0,
            queue            TEXT NOT NULL DEFAULT 'default',
            priority         INTEGER NOT NULL DEFAULT 0,
            parent_id        TEXT,
            forked_from      TEXT,
            created_at       DOUBLE PRECISION NOT NULL,
            updated_at       DOUBLE PRECISION NOT NULL,
            lease_owner      TEXT,
            lease_expires_at DOUBLE PRECISION,
            epoch            BIGINT NOT NULL DEFAULT 0,
            last_seq         BIGINT NOT NULL DEFAULT 0,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            wake_at          DOUBLE PRECISION
        )
        """,
        "CREATE INDEX torpor_runs_by_status ON torpor_runs (status, queue, priority, created_at)",
        "CREATE INDEX torpor_runs_by_created ON torpor_runs (created_at)",
        """
        CREATE TABLE torpor_log (
            run_id     TEXT NOT NULL,
            seq        BIGINT NOT NULL,
            kind       TEXT NOT NULL,
            payload    TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (run_id, seq)
        )
        """,
        """
        CREATE TABLE torpor_events (
            id           {ident},
            run_id       TEXT NOT NULL,
            name         TEXT NOT NULL,
            payload      TEXT NOT NULL,
            created_at   DOUBLE PRECISION NOT NULL,
            consumed_seq BIGINT
        )
        """,
        "CREATE INDEX torpor_events_by_run ON torpor_events (run_id, name, consumed_seq)",
        """
        CREATE TABLE torpor_timers (
            id      {ident},
            run_id  TEXT NOT NULL,
            name    TEXT NOT NULL,
            fire_at DOUBLE PRECISION NOT NULL,
            fired   INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX torpor_timers_due ON torpor_timers (fired, fire_at)",
        """
        CREATE TABLE torpor_snapshots (
            id           TEXT PRIMARY KEY,
            run_id       TEXT NOT NULL,
            seq          BIGINT NOT NULL,
            manifest     TEXT NOT NULL,
            created_at   DOUBLE PRECISION NOT NULL,
            raw_bytes    BIGINT NOT NULL,
            stored_bytes BIGINT NOT NULL,
            chunks       INTEGER NOT NULL,
            new_chunks   INTEGER NOT NULL,
            dump_ms      DOUBLE PRECISION NOT NULL,
            store_ms     DOUBLE PRECISION NOT NULL
        )
        """,
        "CREATE INDEX torpor_snapshots_by_run ON torpor_snapshots (run_id, seq)",
    ],
]

MIGRATIONS.append(
    # 2: where a worker finds a run's workflow code ({"module": ...} or {"file": ...}).
    ["ALTER TABLE torpor_runs ADD COLUMN source TEXT"]
)

SCHEMA_VERSION = len(MIGRATIONS)
