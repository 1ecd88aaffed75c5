"""Executing one claimed run of the replay road, from the top, to an outcome."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import typing
from collections.abc import Callable
from typing import Any

from .._errors import StoreUnavailableError, TorporError
from .._model import RunStatus
from ._codec import Unrecordable, encode_error, from_json, to_json
from ._context import (
    Cancelled,
    Interrupt,
    Parked,
    Released,
    Stopped,
    Unreachable,
    WorkflowContext,
)
from ._journal import Journal
from ._registry import WorkflowDef, lookup_workflow

__all__ = ["encode_input", "execute_run"]

log = logging.getLogger("torpor.worker")


def encode_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"args": to_json(list(args)), "kwargs": to_json(kwargs)}
    except Unrecordable as exc:
        raise TorporError(
            f"a workflow argument is a `{exc.type_name}`, which torpor cannot record; "
            "pass JSON-compatible data, dataclasses or pydantic models"
        ) from None


def _decode_input(fn: Callable[..., Any], data: Any) -> tuple[list[Any], dict[str, Any]]:
    data = data or {}
    args = list(data.get("args") or [])
    kwargs = dict(data.get("kwargs") or {})
    try:
        hints = typing.get_type_hints(fn)
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    except (TypeError, NameError):
        return args, kwargs
    for name, value in bound.arguments.items():
        if name in hints:
            bound.arguments[name] = from_json(value, hints[name])
    return list(bound.args), dict(bound.kwargs)


def _invoke(wf: WorkflowDef, args: list[Any], kwargs: dict[str, Any]) -> Any:
    if wf.is_async:
        return asyncio.run(wf.fn(*args, **kwargs))
    return wf.fn(*args, **kwargs)


def execute_run(
    journal: Journal,
    *,
    worker_id: str,
    stopping: threading.Event,
    on_context: Callable[[WorkflowContext], None] | None = None,
) -> RunStatus | None:
    """Run the journal's run (claimed by ``worker_id``) until it ends, parks or is released.

    Returns the final status, or None if the run left this worker unfinished (parked,
    released at shutdown, or taken over by another worker).
    """
    run = journal.run
    try:
        wf = lookup_workflow(run.workflow, run.source)
    except TorporError as exc:
        return _end(journal, RunStatus.FAILED, error=encode_error(exc))
    ctx = WorkflowContext.load(journal, worker_id=worker_id, stopping=stopping)
    if on_context is not None:
        on_context(ctx)
    token = ctx.activate()
    try:
        if run.attempt > 1:
            ctx.record("recovered", {"attempt": run.attempt, "worker": worker_id})
        ctx.boundary()
        args, kwargs = _decode_input(wf.fn, run.input)
        result = _invoke(wf, args, kwargs)
    except Cancelled:
        return _end(journal, RunStatus.CANCELLED)
    except Parked:
        return None
    except Released:
        journal.release()
        return None
    except Stopped:
        log.warning("run %s: lease lost to another worker; stopped", run.id)
        return None
    except (Unreachable, StoreUnavailableError) as exc:
        # Not the workflow's failure: the run is taken up again once its lease expires.
        log.warning(
            "run %s: the store is unreachable (%s); this attempt stops and the run resumes "
            "from its log when its lease expires",
            run.id,
            exc.reason if isinstance(exc, StoreUnavailableError) else exc,
        )
        return None
    except Interrupt:  # pragma: no cover - every Interrupt is handled above
        raise
    except Exception as exc:  # NondeterminismError included: the run fails with it
        return _end(journal, RunStatus.FAILED, error=encode_error(exc))
    finally:
        ctx.deactivate(token)
    try:
        output = to_json(result)
    except Unrecordable as exc:
        error = TorporError(f"the workflow returned a `{exc.type_name}`, which cannot be recorded")
        return _end(journal, RunStatus.FAILED, error=encode_error(error))
    return _end(journal, RunStatus.COMPLETED, output=output)


def _end(
    journal: Journal, status: RunStatus, *, output: Any = None, error: Any = None
) -> RunStatus | None:
    return status if journal.end(status, output=output, error=error) else None
