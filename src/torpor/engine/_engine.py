"""Executing one claimed run of the replay road, from the top, to an outcome."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import typing
from collections.abc import Callable
from typing import Any

from .._errors import FencedError, NondeterminismError, StoreUnavailableError, TorporError
from .._model import RunRecord, RunStatus
from ..store import Store
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
    store: Store,
    run: RunRecord,
    *,
    worker_id: str,
    park_after: float | None,
    stopping: threading.Event,
    spawn: Callable[[str], None],
    on_context: Callable[[WorkflowContext], None] | None = None,
    context_class: type[WorkflowContext] = WorkflowContext,
) -> RunStatus | None:
    """Run ``run`` (claimed by ``worker_id``) until it ends, parks or is released.

    Returns the final status, or None if the run left this worker unfinished (parked,
    released at shutdown, or taken over by another worker).
    """
    try:
        wf = lookup_workflow(run.workflow, run.source)
    except TorporError as exc:
        return _end(store, run, RunStatus.FAILED, error=encode_error(exc))
    ctx = context_class.load(
        store, run, worker_id=worker_id, park_after=park_after, stopping=stopping, spawn=spawn
    )
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
        return _end(store, run, RunStatus.CANCELLED)
    except Parked:
        return None
    except Released:
        _release(store, run)
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
    except NondeterminismError as exc:
        return _end(store, run, RunStatus.FAILED, error=encode_error(exc))
    except Exception as exc:
        return _end(store, run, RunStatus.FAILED, error=encode_error(exc))
    finally:
        ctx.deactivate(token)
    try:
        output = to_json(result)
    except Unrecordable as exc:
        error = TorporError(f"the workflow returned a `{exc.type_name}`, which cannot be recorded")
        return _end(store, run, RunStatus.FAILED, error=encode_error(error))
    return _end(store, run, RunStatus.COMPLETED, output=output)


def _end(
    store: Store, run: RunRecord, status: RunStatus, *, output: Any = None, error: Any = None
) -> RunStatus | None:
    summary: dict[str, Any] = {}
    if error is not None:
        summary = {"type": error.get("type"), "message": error.get("message")}
    try:
        store.update_run(
            run.id,
            run.epoch,
            status=status,
            output=output,
            error=error,
            entry=(status.value, summary),
        )
    except FencedError:
        log.warning(
            "run %s: lease lost before recording its end; the new owner finishes it", run.id
        )
        return None
    log.info("run %s %s (attempt %d)", run.id, status.value, run.attempt)
    if run.parent_id:
        store.wake_run(run.parent_id)
    return status


def _release(store: Store, run: RunRecord) -> None:
    with contextlib.suppress(FencedError):
        store.update_run(
            run.id, run.epoch, status=RunStatus.QUEUED, release=True, entry=("released", {})
        )
