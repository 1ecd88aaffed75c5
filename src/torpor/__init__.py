"""torpor: durable execution for long-running LLM agents, by replay or by snapshot.

The public API is what ``__all__`` lists; everything in ``_private`` modules may change.
"""

from __future__ import annotations

__version__ = "0.2.0"

from typing import TYPE_CHECKING, Any

from ._config import Settings
from ._errors import (
    ConfigError,
    FencedError,
    LogConflictError,
    NondeterminismError,
    PayloadTooLargeError,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    RunStateError,
    SchemaVersionError,
    StepResultError,
    StepTimeoutError,
    StoreUnavailableError,
    TorporError,
    WorkflowNotFoundError,
)
from ._model import Event, LogEntry, Road, RunRecord, RunStatus, SnapshotRecord, Timer
from .agent import Agent, AgentMaxTurnsError, tool
from .engine import (
    RecordedError,
    checkpoint,
    idempotency_key,
    now,
    patched,
    random,
    sleep,
    step,
    uuid4,
    wait_for_event,
    workflow,
)
from .log import ContextLog
from .runtime import Run, Worker, cancel, configure, fork, resume, send, start
from .store import Store, open_store

if TYPE_CHECKING:
    from .client import Client

__all__ = [
    "Agent",
    "AgentMaxTurnsError",
    "Client",
    "ConfigError",
    "ContextLog",
    "Event",
    "FencedError",
    "LogConflictError",
    "LogEntry",
    "NondeterminismError",
    "PayloadTooLargeError",
    "RecordedError",
    "Road",
    "Run",
    "RunCancelledError",
    "RunFailedError",
    "RunNotFoundError",
    "RunRecord",
    "RunStateError",
    "RunStatus",
    "SchemaVersionError",
    "Settings",
    "SnapshotRecord",
    "StepResultError",
    "StepTimeoutError",
    "Store",
    "StoreUnavailableError",
    "Timer",
    "TorporError",
    "Worker",
    "WorkflowNotFoundError",
    "__version__",
    "cancel",
    "checkpoint",
    "configure",
    "fork",
    "idempotency_key",
    "now",
    "open_store",
    "patched",
    "random",
    "resume",
    "send",
    "sleep",
    "start",
    "step",
    "tool",
    "uuid4",
    "wait_for_event",
    "workflow",
]


def __getattr__(name: str) -> Any:
    # The HTTP client loads httpx2 (~0.1 s); workers and most scripts never use it.
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module 'torpor' has no attribute {name!r}")
