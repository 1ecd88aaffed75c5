"""torpor: durable execution for long-running LLM agents, by replay or by snapshot.

The public API is what ``__all__`` lists; everything in ``_private`` modules may change.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._config import Settings
from ._errors import (
    ConfigError,
    FencedError,
    LogConflictError,
    PayloadTooLargeError,
    RunNotFoundError,
    RunStateError,
    SchemaVersionError,
    StoreUnavailableError,
    TorporError,
)
from ._model import Event, LogEntry, Road, Run, RunStatus, SnapshotRecord, Timer
from .log import ContextLog
from .store import Store, open_store

__all__ = [
    "ConfigError",
    "ContextLog",
    "Event",
    "FencedError",
    "LogConflictError",
    "LogEntry",
    "PayloadTooLargeError",
    "Road",
    "Run",
    "RunNotFoundError",
    "RunStateError",
    "RunStatus",
    "SchemaVersionError",
    "Settings",
    "SnapshotRecord",
    "Store",
    "StoreUnavailableError",
    "Timer",
    "TorporError",
    "__version__",
    "open_store",
]
