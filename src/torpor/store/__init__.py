"""The store: runs, context logs, events, timers and snapshot records, on SQLite or PostgreSQL."""

from __future__ import annotations

from .._config import Settings, redact_url
from .._errors import ConfigError
from ._base import Store, encode_json
from ._schema import SCHEMA_VERSION
from ._sql import SqlStore

__all__ = ["SCHEMA_VERSION", "SqlStore", "Store", "encode_json", "open_store"]


def open_store(url: str | None = None, *, settings: Settings | None = None) -> Store:
    """Open (creating and migrating if needed) the store at ``url``.

    Without a URL, `TORPOR_DATABASE_URL` decides, and without that an SQLite file under
    `TORPOR_HOME`.
    """
    settings = settings or Settings.from_env()
    url = url or settings.database_url
    if url.startswith("sqlite:"):
        from ._sqlite import SQLiteStore

        return SQLiteStore(
            url,
            synchronous=settings.sqlite_synchronous,
            max_payload_bytes=settings.max_payload_bytes,
        )
    if url.startswith(("postgresql://", "postgres://")):
        from ._postgres import PostgresStore

        return PostgresStore(url, max_payload_bytes=settings.max_payload_bytes)
    raise ConfigError(
        f"unsupported database URL {redact_url(url)!r}; "
        "use sqlite:///path/to/torpor.db or postgresql://user@host/dbname"
    )
