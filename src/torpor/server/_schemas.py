"""Request and response bodies of the HTTP API, as pydantic models (they make the OpenAPI
schema). Responses are the records' ``to_json()``, the CLI's ``--json`` output: a model here
describes it (a run's is made from `RunRecord` itself)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from .._model import RUN_TIMES, Road, RunRecord

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
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments; none may be named like an option of `torpor.start` "
        "(fn, road, detach, queue, priority, store): pass those in `args`.",
    )
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


def _run_out() -> type[BaseModel]:
    """`RunRecord.to_json()` as a model: the record's fields, its times as ISO strings."""
    hints = typing.get_type_hints(RunRecord)
    described = {
        "created_at": "ISO 8601, UTC.",
        "epoch": "Fencing epoch: each claim of the run by a worker raises it.",
        "last_seq": "The seq of the log's last entry (0: empty).",
        "source": "Where workers import the workflow's code from: module and/or file.",
    }
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(RunRecord):
        hint = hints[field.name]
        if field.name in RUN_TIMES:
            hint = str | None if type(None) in typing.get_args(hint) else str
        fields[field.name] = (hint, Field(description=described.get(field.name)))
    fields["log_length"] = (int, Field(description="The same as last_seq (its earlier name)."))
    return create_model("RunOut", __doc__="A run.", **fields)


RunOut = _run_out()


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
