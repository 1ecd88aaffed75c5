"""torpor's exceptions: one root, structured fields, picklable.

Every subclass passes its structured fields to ``__init__`` and keeps them as attributes;
``__reduce__`` rebuilds from those fields, so errors cross process boundaries (a sandbox,
a worker subprocess) intact.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigError",
    "FencedError",
    "LogConflictError",
    "PayloadTooLargeError",
    "RunNotFoundError",
    "RunStateError",
    "SchemaVersionError",
    "StoreUnavailableError",
    "TorporError",
]


class TorporError(Exception):
    """Root of every error torpor raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[TorporError], state: dict[str, Any]) -> TorporError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


class ConfigError(TorporError):
    """A setting (environment variable, URL, option) is malformed."""


class StoreUnavailableError(TorporError):
    """The database cannot be reached or opened."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot open the torpor store at {url}: {reason}; "
            "check TORPOR_DATABASE_URL and that the database server is running"
        )
        self.url = url
        self.reason = reason


class SchemaVersionError(TorporError):
    """The database was written by a newer torpor than this one."""

    def __init__(self, url: str, found: int, supported: int) -> None:
        super().__init__(
            f"the torpor store at {url} has schema version {found}, but this torpor "
            f"understands up to version {supported}; upgrade torpor "
            "(pip install -U torpor) or point TORPOR_DATABASE_URL at another database"
        )
        self.url = url
        self.found = found
        self.supported = supported


class RunNotFoundError(TorporError):
    """No run has this id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}; `torpor ps --all` lists the runs")
        self.run_id = run_id


class RunStateError(TorporError):
    """The run is not in a state that allows the operation."""

    def __init__(self, run_id: str, status: str, operation: str) -> None:
        super().__init__(f"run {run_id} is {status}: cannot {operation}")
        self.run_id = run_id
        self.status = status
        self.operation = operation


class LogConflictError(TorporError):
    """An append with ``expected_seq`` lost a race: the log moved on."""

    def __init__(self, run_id: str, expected_seq: int, next_seq: int) -> None:
        super().__init__(
            f"run {run_id}: append expected to write seq {expected_seq}, but the log's next "
            f"seq is {next_seq}; another writer appended first — re-read the log and retry"
        )
        self.run_id = run_id
        self.expected_seq = expected_seq
        self.next_seq = next_seq


class PayloadTooLargeError(TorporError):
    """A payload is over the configured size limit."""

    def __init__(self, run_id: str, kind: str, size: int, limit: int) -> None:
        super().__init__(
            f"run {run_id}: {kind} payload is {size:,} bytes, over the limit of {limit:,} "
            "bytes; store large data in the workspace or a blob and log a reference, or "
            "raise TORPOR_MAX_PAYLOAD_BYTES"
        )
        self.run_id = run_id
        self.kind = kind
        self.size = size
        self.limit = limit


class FencedError(TorporError):
    """A writer's lease on a run was lost: another worker owns the run now."""

    def __init__(self, run_id: str, epoch: int, current_epoch: int) -> None:
        super().__init__(
            f"run {run_id}: this worker's lease (epoch {epoch}) was taken over "
            f"(epoch now {current_epoch}); it stops working on the run"
        )
        self.run_id = run_id
        self.epoch = epoch
        self.current_epoch = current_epoch
