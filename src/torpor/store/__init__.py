"""The store: runs, context logs, events, timers and snapshot records, on SQLite or PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._config import Settings, redact_url
from .._errors import ConfigError
from ._base import Appended, RunEndedError, Store, StoreNotFoundError, encode_json
from ._schema import SCHEMA_VERSION
from ._sql import SqlStore

if TYPE_CHECKING:
    from ._postgres import PostgresStore
    from ._sqlite import SQLiteStore

__all__ = [
    "SCHEMA_VERSION",
    "Appended",
    "PostgresStore",
    "RunEndedError",
    "SQLiteStore",
    "SqlStore",
    "Store",
    "StoreNotFoundError",
    "encode_json",
    "open_store",
]


def open_store(
    url: str | None = None, *, settings: Settings | None = None, create: bool = True
) -> Store:
    """Open (creating and migrating if needed) the store at ``url``.

    Without a URL, `TORPOR_DATABASE_URL` decides, and without that an SQLite file under
    `TORPOR_HOME`. ``create=False`` (commands that read, or act on existing runs): a
    store that does not exist yet (no SQLite file, no torpor tables in the PostgreSQL
    database) is `StoreNotFoundError`, and nothing is created.
    """
    settings = settings or Settings.from_env()
    url = url or settings.database_url
    if url.startswith("sqlite:"):
        from ._sqlite import SQLiteStore

        return SQLiteStore(
            url,
            synchronous=settings.sqlite_synchronous,
            max_payload_bytes=settings.max_payload_bytes,
            create=create,
        )
    if url.startswith(("postgresql://", "postgres://")):
        from ._postgres import PostgresStore

        return PostgresStore(url, max_payload_bytes=settings.max_payload_bytes, create=create)
    raise ConfigError(
        f"unsupported database URL {redact_url(url)!r}; "
        "use sqlite:///path/to/torpor.db or postgresql://user@host/dbname"
    )


def __getattr__(name: str) -> Any:
    # The dialects load when first asked for: psycopg alone takes ~0.1 s to import.
    if name == "PostgresStore":
        from ._postgres import PostgresStore

        return PostgresStore
    if name == "SQLiteStore":
        from ._sqlite import SQLiteStore

        return SQLiteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
