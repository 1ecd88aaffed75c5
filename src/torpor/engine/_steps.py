"""`@torpor.step` and `@torpor.workflow`: journaled calls, retried with backoff."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import random as _random
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

from .._errors import StepResultError, StepTimeoutError
from ._codec import Unrecordable, args_hash, decode_error, encode_error, from_json, to_json
from ._context import WorkflowContext, current, in_step, step_key
from ._journal import HostCall, lookup_host_call
from ._registry import WorkflowDef, register_workflow

__all__ = [
    "Step",
    "StepOptions",
    "attempt_with_retries",
    "execute_host_call",
    "step",
    "workflow",
    "workflow_def",
]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class StepOptions:
    name: str
    retries: int
    backoff: float
    max_backoff: float
    timeout: float | None
    non_retryable: tuple[type[BaseException], ...]
    # The log entry kind of the recorded result: "step", or what the agent records its model
    # calls and tool calls as, so the context log reads as a conversation.
    kind: str = "step"

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter: up to backoff·2^(attempt-1), capped."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return _random.uniform(ceiling / 2, ceiling)

    def retryable(self, exc: BaseException, attempt: int) -> bool:
        return attempt <= self.retries and not isinstance(exc, self.non_retryable)


def retry_payload(
    opts: StepOptions, pos: int, attempt: int, delay: float, exc: BaseException
) -> dict[str, Any]:
    return {"at": pos, "name": opts.name, "attempt": attempt, "delay": delay,
            "error": encode_error(exc)}  # fmt: skip


def failure_payload(
    opts: StepOptions, pos: int, attempt: int, exc: BaseException, digest: str | None = None
) -> dict[str, Any]:
    payload: dict[str, Any] = {"pos": pos, "name": opts.name}
    if digest is not None:
        payload["hash"] = digest
    payload["error"] = encode_error(exc)
    if attempt > 1:
        payload["attempt"] = attempt
    return payload


def attempt_with_retries(
    opts: StepOptions,
    pos: int,
    body: Callable[[], Any],
    *,
    record_retry: Callable[[dict[str, Any]], Any],
    before_attempt: Callable[[], None] = lambda: None,
) -> tuple[Any, BaseException | None, int]:
    """Call ``body`` until it returns, or fails in a way (or as often as) ``opts`` does not
    retry; each failed attempt that is retried is recorded (``record_retry``) before the
    backoff. ``(result, None, attempts)`` or ``(None, error, attempts)``."""
    attempt = 1
    while True:
        before_attempt()
        try:
            return body(), None, attempt
        except Exception as exc:
            if not opts.retryable(exc, attempt):
                return None, exc, attempt
            delay = opts.delay(attempt)
            record_retry(retry_payload(opts, pos, attempt, delay, exc))
            time.sleep(delay)
            attempt += 1


def execute_host_call(
    call: HostCall,
    *,
    record_retry: Callable[[dict[str, Any]], Any],
    before_attempt: Callable[[], None] = lambda: None,
    sandboxed: bool = False,
) -> tuple[dict[str, Any], BaseException | None]:
    """Execute a host call with its retries: the payload to record (``result``/``error``),
    and the exception that ended it, if one did. ``sandboxed``: the request came from a
    sandbox, and the call's `check_sandboxed` vets it first (a refusal is the call's error,
    recorded, and not retried if the call lists it as non-retryable)."""
    definition = lookup_host_call(call.call)
    check = definition.check_sandboxed if sandboxed else None

    def attempt_once() -> Any:
        if check is not None:
            check(call.request)
        return definition.fn(call.request)

    opts = StepOptions(
        name=call.name,
        retries=max(0, call.retries),
        backoff=call.backoff,
        max_backoff=call.max_backoff,
        timeout=None,
        non_retryable=definition.non_retryable(),
        kind=call.kind,
    )
    result, exc, attempt = attempt_with_retries(
        opts,
        call.pos,
        attempt_once,
        record_retry=record_retry,
        before_attempt=before_attempt,
    )
    if exc is not None:
        return failure_payload(opts, call.pos, attempt, exc), exc
    payload: dict[str, Any] = {"pos": call.pos, "name": call.name, "result": to_json(result)}
    if attempt > 1:
        payload["attempt"] = attempt
    return payload, None


def _return_annotation(fn: Callable[..., Any]) -> Any:
    try:
        return typing.get_type_hints(fn).get("return")
    except Exception:
        return None


class Step:
    """What a step call does inside a workflow; shared by the sync and async wrappers."""

    def __init__(self, fn: Callable[..., Any], opts: StepOptions) -> None:
        self.fn = fn
        self.opts = opts
        self._annotation: Any = ...

    @property
    def annotation(self) -> Any:
        if self._annotation is ...:
            self._annotation = _return_annotation(self.fn)
        return self._annotation

    def replayed(self, ctx: WorkflowContext, pos: int, digest: str) -> tuple[bool, Any]:
        entry = ctx.recorded(pos, (self.opts.kind,), self.opts.name)
        if entry is None:
            return False, None
        if entry.payload.get("hash") != digest and pos not in ctx.warned:
            ctx.warned.add(pos)
            ctx.record(
                "warning",
                {
                    "at": pos,
                    "message": f"step `{self.opts.name}` at position {pos} was called with "
                    "other arguments than recorded; returning the recorded result",
                },
            )
        if "error" in entry.payload:
            raise decode_error(entry.payload["error"])
        return True, from_json(entry.payload.get("result"), self.annotation)

    def finish(self, ctx: WorkflowContext, pos: int, digest: str, attempt: int, result: Any) -> Any:
        try:
            value = to_json(result)
        except Unrecordable as exc:
            raise StepResultError(ctx.run.id, pos, self.opts.name, exc.type_name) from None
        payload: dict[str, Any] = {"pos": pos, "name": self.opts.name, "hash": digest}
        payload["result"] = value
        if attempt > 1:
            payload["attempt"] = attempt
        ctx.record(self.opts.kind, payload)
        return result

    def failed(
        self, ctx: WorkflowContext, pos: int, digest: str, attempt: int, exc: BaseException
    ) -> None:
        ctx.record(self.opts.kind, failure_payload(self.opts, pos, attempt, exc, digest))

    def call_sync(self, ctx: WorkflowContext, args: Any, kwargs: Any) -> Any:
        pos = ctx.next_position()
        digest = args_hash(args, kwargs)
        done, value = self.replayed(ctx, pos, digest)
        if done:
            return value
        result, exc, attempt = attempt_with_retries(
            self.opts,
            pos,
            lambda: self._attempt_sync(ctx.run.id, pos, args, kwargs),
            record_retry=lambda retry: ctx.record("step_retry", retry),
            before_attempt=ctx.boundary,
        )
        if exc is not None:
            self.failed(ctx, pos, digest, attempt, exc)
            raise exc
        return self.finish(ctx, pos, digest, attempt, result)

    def _attempt_sync(self, run_id: str, pos: int, args: Any, kwargs: Any) -> Any:
        ctx_vars = contextvars.copy_context()
        ctx_vars.run(in_step.set, True)
        ctx_vars.run(step_key.set, f"{run_id}:{pos}")
        if self.opts.timeout is None:
            return ctx_vars.run(self.fn, *args, **kwargs)
        # The attempt runs in a helper thread so the workflow can stop waiting for it; a
        # thread cannot be killed, so a timed-out attempt may still finish in the background.
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="torpor-step")
        try:
            future = pool.submit(ctx_vars.run, self.fn, *args, **kwargs)
            return future.result(timeout=self.opts.timeout)
        except concurrent.futures.TimeoutError:
            raise StepTimeoutError(self.opts.name, self.opts.timeout) from None
        finally:
            pool.shutdown(wait=False)

    async def call_async(self, ctx: WorkflowContext, pos: int, args: Any, kwargs: Any) -> Any:
        digest = args_hash(args, kwargs)
        done, value = self.replayed(ctx, pos, digest)
        if done:
            return value
        attempt = 1
        while True:
            ctx.boundary()
            in_step.set(True)  # this coroutine runs in its own task's context copy
            step_key.set(f"{ctx.run.id}:{pos}")
            try:
                coro = self.fn(*args, **kwargs)
                if self.opts.timeout is None:
                    result = await coro
                else:
                    try:
                        result = await asyncio.wait_for(coro, self.opts.timeout)
                    except TimeoutError:
                        raise StepTimeoutError(self.opts.name, self.opts.timeout) from None
            except Exception as exc:
                if not self.opts.retryable(exc, attempt):
                    self.failed(ctx, pos, digest, attempt, exc)
                    raise
                delay = self.opts.delay(attempt)
                ctx.record("step_retry", retry_payload(self.opts, pos, attempt, delay, exc))
                await asyncio.sleep(delay)
                attempt += 1
                continue
            finally:
                in_step.set(False)
                step_key.set(None)
            return self.finish(ctx, pos, digest, attempt, result)


@overload
def step(fn: Callable[P, R], /) -> Callable[P, R]: ...
@overload
def step(
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    timeout: float | None = None,
    non_retryable: tuple[type[BaseException], ...] = (),
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def step(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    timeout: float | None = None,
    non_retryable: tuple[type[BaseException], ...] = (),
) -> Any:
    """Make a function a step: inside a workflow its result is recorded in the run's log and
    never computed again for the same call position.

    Args:
        name: the name recorded (default: the function's qualified name).
        retries: extra attempts after a failure, with exponential backoff and jitter.
        backoff: the first retry's delay ceiling in seconds; it doubles per attempt.
        max_backoff: the largest delay between attempts.
        timeout: seconds an attempt may take before it fails with `StepTimeoutError`.
        non_retryable: exception types that fail the step at once.

    Outside a workflow, and inside another step, a step is a plain call.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        opts = StepOptions(
            name=name or fn.__qualname__,
            retries=max(0, retries),
            backoff=backoff,
            max_backoff=max_backoff,
            timeout=timeout,
            non_retryable=tuple(non_retryable),
        )
        impl = Step(fn, opts)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                ctx = current()
                if ctx is None or in_step.get():
                    return fn(*args, **kwargs)
                # The position is taken at call time, so steps started together (gather)
                # get positions in the order of the calls, not of their completion.
                return impl.call_async(ctx, ctx.next_position(), args, kwargs)

            async_wrapper.__torpor_step__ = opts  # type: ignore[attr-defined]
            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = current()
            if ctx is None or in_step.get():
                return fn(*args, **kwargs)
            return impl.call_sync(ctx, args, kwargs)

        wrapper.__torpor_step__ = opts  # type: ignore[attr-defined]
        return wrapper

    return decorate(fn) if fn is not None else decorate


def workflow(
    name: str | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Register a function (plain or ``async def``) as a workflow that `torpor.start` runs
    durably. ``name`` defaults to ``module.qualname``."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        wf = register_workflow(fn, name)
        fn.__torpor_workflow__ = wf  # type: ignore[attr-defined]
        return fn

    return decorate


def workflow_def(fn: Callable[..., Any]) -> WorkflowDef | None:
    wf = getattr(fn, "__torpor_workflow__", None)
    return wf if isinstance(wf, WorkflowDef) else None
