"""Request and response bodies of the HTTP API, as pydantic models (they make the OpenAPI
schema). Responses have exactly the fields of the records' ``to_json()``, the same as the
CLI's ``--json`` output."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .._model import Road, RunStatus

__all__ = [
    "MAX_INT",
    "NAME_PATTERN",
    "ErrorBody",
    "ErrorOut",
    "EventOut",
    "ForkRequest",
    "HealthOut",
    "LogEntryOut",
    "RunOut",
    "SnapshotOut",
    "StartRequest",
]

# Names and ids go into TEXT columns, where PostgreSQL refuses NUL characters: refusing them
# here gives a 422 that names the field instead of a database error.
NAME_PATTERN = r"^[^\x00]+$"
# Integers go into 64-bit columns (32-bit for priority).
MAX_INT = 2**62

Name = Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=NAME_PATTERN)]


class _Strict(BaseModel):
    # A misspelt field is an error, not silently ignored.
    model_config = ConfigDict(extra="forbid")


class StartRequest(_Strict):
    """Start a run; workers execute it (the server only enqueues it)."""

    workflow: Name = Field(
        description="A workflow registered in the server (see `torpor server --import`), "
        "or FILE:FUNC: a Python file on the server's machine and a function in it."
    )
    args: list[Any] = Field(default_factory=list, description="Positional arguments (JSON).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments.")
    road: Road = Road.REPLAY
    queue: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NAME_PATTERN)] = (
        "default"
    )
    priority: int = Field(0, ge=-(2**31), le=2**31 - 1, description="Higher runs first.")


class ResumeRequest(_Strict):
    snapshot: Name | None = Field(
        None,
        description="Snapshot road: roll the run back to this snapshot of its own (the log "
        "keeps its history and records the rollback). Without it: queue a failed or "
        "cancelled run again.",
    )


class ForkRequest(_Strict):
    at: int | None = Field(
        None,
        ge=1,
        le=MAX_INT,
        description="Replay road: re-execute from this call position (default: after all "
        "recorded calls).",
    )
    snapshot: Name | None = Field(
        None, description="Snapshot road: the snapshot to restore (default: the newest)."
    )


class RunOut(BaseModel):
    id: str
    workflow: str
    road: Road
    status: RunStatus
    attempt: int
    created_at: str = Field(description="ISO 8601, UTC.")
    updated_at: str
    queue: str
    priority: int
    parent_id: str | None
    forked_from: str | None
    input: Any
    output: Any
    error: Any
    log_length: int = Field(description="The seq of the log's last entry (0: empty).")
    lease_owner: str | None
    lease_expires_at: str | None
    cancel_requested: bool
    wake_at: str | None


class LogEntryOut(BaseModel):
    seq: int
    kind: str
    payload: Any
    created_at: str


class EventOut(BaseModel):
    id: int
    run_id: str
    name: str
    payload: Any
    created_at: str
    delivered: bool


class SnapshotOut(BaseModel):
    id: str
    run_id: str
    seq: int
    manifest: str
    created_at: str
    raw_bytes: int
    stored_bytes: int
    chunks: int
    new_chunks: int
    dump_ms: float
    store_ms: float


class HealthOut(BaseModel):
    status: str = Field(description="`ok`, or `unavailable` (with a 503) if the store is not.")
    version: str


class ErrorBody(BaseModel):
    type: str = Field(
        description="The torpor error class (RunNotFoundError, ...) or the kind of HTTP error "
        "(Unauthorized, InvalidJSON, PayloadTooLarge, ...)."
    )
    message: str = Field(description="What was wrong and how to fix it.")
    details: dict[str, Any] = Field(
        default_factory=dict, description="Structured fields of the error (run_id, status...)."
    )


class ErrorOut(BaseModel):
    error: ErrorBody
