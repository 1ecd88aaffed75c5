"""The domain records of DESIGN.md's Concepts: runs, log entries, events, timers, snapshots."""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from ._errors import TorporError

__all__ = [
    "RUN_TIMES",
    "Event",
    "LogEntry",
    "Road",
    "RunRecord",
    "RunStatus",
    "SnapshotRecord",
    "Timer",
    "new_run_id",
]

# Crockford's base32 alphabet, lower-cased: no i, l, o, u, so ids read back unambiguously.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_run_id() -> str:
    """A short, readable run id: ``r-`` and 13 base32 characters (65 random bits)."""
    n = secrets.randbits(65)
    chars = [_ALPHABET[(n >> (5 * i)) & 31] for i in range(13)]
    return "r-" + "".join(chars)


class RunStatus(enum.StrEnum):
    """Lifecycle of a run: ``queued → running → (waiting | suspended) → running → end``."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class Road(enum.StrEnum):
    """How a run is made durable."""

    REPLAY = "replay"
    SNAPSHOT = "snapshot"


def iso(ts: float) -> str:
    """A store timestamp (seconds since the epoch) as ISO 8601 UTC, for output."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def from_iso(text: str) -> float:
    """The inverse of `iso` (to its millisecond precision)."""
    return datetime.fromisoformat(text).timestamp()


@dataclass(frozen=True)
class RunRecord:
    """One execution of a workflow function."""

    id: str
    workflow: str
    road: Road
    status: RunStatus
    input: Any
    output: Any
    error: Any
    attempt: int
    queue: str
    priority: int
    parent_id: str | None
    forked_from: str | None
    created_at: float
    updated_at: float
    lease_owner: str | None
    lease_expires_at: float | None
    epoch: int
    last_seq: int
    cancel_requested: bool
    wake_at: float | None
    source: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The run as JSON, the one form it has outside Python (the HTTP API, ``--json``
        output, the snapshot road's gateway): every field under its own name, enums as
        their values, times as ISO 8601 UTC strings (to the millisecond)."""
        data = {name: getattr(self, name) for name in _RUN_FIELDS}
        data["road"] = self.road.value
        data["status"] = self.status.value
        for name in RUN_TIMES:
            value = data[name]
            data[name] = None if value is None else iso(value)
        data["log_length"] = self.last_seq  # its name in torpor 0.1's JSON, kept for clients
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        """The record `to_json` describes. Keys it does not know are ignored (a newer
        torpor's); times may also be given as seconds since the epoch."""
        if "last_seq" not in data and "log_length" in data:  # from a torpor 0.1 server
            data = {**data, "last_seq": data["log_length"], "epoch": data.get("epoch", 0),
                    "source": data.get("source")}  # fmt: skip
        missing = set(_RUN_FIELDS) - data.keys()
        if missing:
            raise TorporError(f"not a run's JSON form: it lacks {', '.join(sorted(missing))}")
        values = {name: data[name] for name in _RUN_FIELDS}
        values["road"] = Road(values["road"])
        values["status"] = RunStatus(values["status"])
        for name in RUN_TIMES:
            values[name] = _time(values[name])
        return cls(**values)


_RUN_FIELDS = tuple(f.name for f in fields(RunRecord))  # in order: stable JSON output
# The fields of a run that are times: seconds since the epoch, ISO strings in JSON.
RUN_TIMES = ("created_at", "updated_at", "lease_expires_at", "wake_at")


def _time(value: str | float | None) -> float | None:
    if value is None or isinstance(value, int | float):
        return value
    return from_iso(value)


@dataclass(frozen=True)
class LogEntry:
    """One entry of a run's append-only context log; ``seq`` is dense from 1."""

    run_id: str
    seq: int
    kind: str
    payload: Any
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "payload": self.payload,
            "created_at": iso(self.created_at),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], run_id: str) -> LogEntry:
        """The entry `to_json` describes, of run ``run_id`` (that form leaves the run out)."""
        return cls(
            run_id=run_id,
            seq=int(data["seq"]),
            kind=data["kind"],
            payload=data.get("payload"),
            created_at=from_iso(data["created_at"]),
        )


@dataclass(frozen=True)
class Event:
    """A named message sent to a run from outside."""

    id: int
    run_id: str
    name: str
    payload: Any
    created_at: float
    consumed_seq: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_id": self.run_id,
            "name": self.name,
            "payload": self.payload,
            "created_at": iso(self.created_at),
            "delivered": self.consumed_seq is not None,
        }


@dataclass(frozen=True)
class Timer:
    """A durable wake-up time for a run."""

    id: int
    run_id: str
    name: str
    fire_at: float
    fired: bool


@dataclass(frozen=True)
class SnapshotRecord:
    """A stored snapshot of a snapshot-road run at a log position."""

    id: str
    run_id: str
    seq: int
    manifest: str
    created_at: float
    raw_bytes: int
    stored_bytes: int
    chunks: int
    new_chunks: int
    dump_ms: float
    store_ms: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_id": self.run_id,
            "seq": self.seq,
            "manifest": self.manifest,
            "created_at": iso(self.created_at),
            "raw_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes,
            "chunks": self.chunks,
            "new_chunks": self.new_chunks,
            "dump_ms": self.dump_ms,
            "store_ms": self.store_ms,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SnapshotRecord:
        """The record `to_json` describes (HTTP clients)."""
        return cls(
            id=data["id"],
            run_id=data["run_id"],
            seq=int(data["seq"]),
            manifest=data["manifest"],
            created_at=from_iso(data["created_at"]),
            raw_bytes=int(data["raw_bytes"]),
            stored_bytes=int(data["stored_bytes"]),
            chunks=int(data["chunks"]),
            new_chunks=int(data["new_chunks"]),
            dump_ms=float(data["dump_ms"]),
            store_ms=float(data["store_ms"]),
        )
