"""torpor's exceptions: one root, structured fields, picklable.

Every subclass passes its structured fields to ``__init__`` and keeps them as attributes;
``__reduce__`` rebuilds from those fields, so errors cross process boundaries (a sandbox,
a worker subprocess) intact.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BaseRootMismatchError",
    "ConfigError",
    "CriuError",
    "CriuNotFoundError",
    "FencedError",
    "LogConflictError",
    "NondeterminismError",
    "PayloadTooLargeError",
    "RunCancelledError",
    "RunFailedError",
    "RunNotFoundError",
    "RunStateError",
    "SandboxError",
    "SchemaVersionError",
    "StepResultError",
    "StepTimeoutError",
    "StoreUnavailableError",
    "TorporError",
    "WorkflowNotFoundError",
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


class NondeterminismError(TorporError):
    """Replay met a different call than the one recorded at a position."""

    def __init__(self, run_id: str, position: int, recorded: str, called: str) -> None:
        super().__init__(
            f"run {run_id} position {position}: recorded `{recorded}`, called `{called}`; "
            "the workflow changed since the run started — guard the change with "
            f"torpor.patched(...) so old runs keep the old path, or fork the run with "
            f"`torpor fork {run_id} --at {position}`"
        )
        self.run_id = run_id
        self.position = position
        self.recorded = recorded
        self.called = called


class StepResultError(TorporError):
    """A step returned (or got) a value torpor cannot record as JSON."""

    def __init__(self, run_id: str, position: int, step: str, type_name: str) -> None:
        super().__init__(
            f"run {run_id} step `{step}` (position {position}) returned a `{type_name}`, "
            "which torpor cannot record; return JSON-compatible data, a dataclass or a "
            "pydantic model"
        )
        self.run_id = run_id
        self.position = position
        self.step = step
        self.type_name = type_name


class StepTimeoutError(TorporError):
    """A step attempt ran longer than its ``timeout``."""

    def __init__(self, step: str, timeout: float) -> None:
        super().__init__(f"step `{step}` did not finish within its timeout of {timeout:g} s")
        self.step = step
        self.timeout = timeout


class WorkflowNotFoundError(TorporError):
    """A run names a workflow this process cannot find or import."""

    def __init__(self, workflow: str, reason: str) -> None:
        super().__init__(
            f"workflow {workflow!r} cannot be loaded: {reason}; start the worker where the "
            "workflow's module is importable (or pass --import MODULE_OR_FILE)"
        )
        self.workflow = workflow
        self.reason = reason


class RunFailedError(TorporError):
    """The run ended `failed`; ``error`` is what it recorded."""

    def __init__(self, run_id: str, error: Any) -> None:
        detail = error.get("message", error) if isinstance(error, dict) else error
        kind = error.get("type", "error") if isinstance(error, dict) else "error"
        super().__init__(f"run {run_id} failed: {kind}: {detail}")
        self.run_id = run_id
        self.error = error


class RunCancelledError(TorporError):
    """The run ended `cancelled`."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} was cancelled")
        self.run_id = run_id


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


class SandboxError(TorporError):
    """A sandbox could not be launched, checkpointed, restored or removed."""

    def __init__(self, sandbox_id: str, problem: str, fix: str) -> None:
        super().__init__(f"sandbox {sandbox_id}: {problem}; {fix}")
        self.sandbox_id = sandbox_id
        self.problem = problem
        self.fix = fix


class BaseRootMismatchError(TorporError):
    """A snapshot was taken over other host files (interpreter, libraries, virtual
    environment) than the base root of the worker asked to restore it has."""

    def __init__(self, snapshot: str, path: str, was: str, now: str) -> None:
        super().__init__(
            f"snapshot {snapshot} was taken over another base root: {path} was {was} there, "
            f"here it is {now}. Restore it on a worker with the same base root (the same OS "
            "image, packages and virtual environment); the run's log is intact"
        )
        self.snapshot = snapshot
        self.path = path


class CriuNotFoundError(TorporError):
    """No usable CRIU (>= the minimum version) was found."""

    def __init__(self, tried: str) -> None:
        super().__init__(
            f"no usable CRIU: {tried}; run scripts/provision-criu, or set "
            "TORPOR_CRIU=/path/to/criu (4.2 or newer)"
        )
        self.tried = tried


class CriuError(TorporError):
    """A CRIU command failed; ``log`` is its full log."""

    def __init__(self, sandbox_id: str, operation: str, detail: str, log: str, fix: str) -> None:
        super().__init__(
            f"sandbox {sandbox_id}: criu {operation} failed: {detail}; {fix} (full log: {log})"
        )
        self.sandbox_id = sandbox_id
        self.operation = operation
        self.detail = detail
        self.log = log
        self.fix = fix
