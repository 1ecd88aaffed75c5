"""Durable waits and recorded values: what a workflow uses instead of the clock, randomness
and blocking calls, so that its replay takes the same path."""

from __future__ import annotations

import random as _random
import time
import uuid as _uuid
from typing import Any

from .._errors import TorporError
from ._context import current, require, step_key

__all__ = [
    "checkpoint",
    "idempotency_key",
    "now",
    "patched",
    "random",
    "sleep",
    "uuid4",
    "wait_for_event",
]


def _recorded_value(name: str, make: Any) -> Any:
    ctx = current()
    if ctx is None:
        return make()
    pos = ctx.next_position()
    entry = ctx.recorded(pos, ("value",), f"torpor.{name}()")
    if entry is not None:
        return entry.payload["value"]
    value = make()
    ctx.record("value", {"pos": pos, "name": name, "value": value})
    return value


def now() -> float:
    """The time (seconds since the epoch), recorded: a replay sees the same instant."""
    return float(_recorded_value("now", time.time))


def random() -> float:
    """A random float in [0, 1), recorded."""
    return float(_recorded_value("random", _random.random))


def uuid4() -> _uuid.UUID:
    """A random UUID, recorded."""
    return _uuid.UUID(_recorded_value("uuid4", lambda: str(_uuid.uuid4())))


def patched(change_id: str) -> bool:
    """True where new code should run: in new runs and in old runs that had not reached
    this point; False in old runs that had already passed it under the old code."""
    ctx = require("torpor.patched")
    pos = ctx.position + 1
    called = f"torpor.patched({change_id!r})"
    entries = ctx.at.get(pos)
    if entries and not any(e.kind == "patch" for e in entries):
        # The old code made another call here: take the old path and leave the position
        # to that call.
        return False
    ctx.next_position()
    entry = ctx.recorded(pos, ("patch",), called)
    if entry is not None:
        return bool(entry.payload["value"])
    ctx.record("patch", {"pos": pos, "change": change_id, "value": True})
    return True


def idempotency_key() -> str:
    """Inside a step: a key that stays the same when this step call is executed again
    (after a crash or a retry), for making external effects exactly-once."""
    key = step_key.get()
    if key is None:
        raise TorporError("torpor.idempotency_key() can only be called inside a step")
    return key


def checkpoint() -> None:
    """Take a snapshot of this run here (snapshot road); the call returns once it is stored.

    A no-op on the replay road, whose state is its journal, and outside a workflow.
    """
    ctx = current()
    if ctx is not None:
        ctx.safepoint(force=True)


def wait_for_event(name: str, timeout: float | None = None) -> Any:
    """Wait durably for the event ``name`` sent to this run; its payload, or None once
    ``timeout`` seconds have passed (measured from the first time the wait began)."""
    ctx = require("torpor.wait_for_event")
    pos = ctx.next_position()
    called = f"torpor.wait_for_event({name!r})"
    entry = ctx.recorded(pos, ("event", "timeout"), called)
    if entry is not None:
        return entry.payload.get("payload") if entry.kind == "event" else None
    ctx.boundary()
    opened = ctx.opened(pos, "wait")
    if opened is not None:
        if opened.payload.get("name") != name:
            ctx.recorded(pos, ("wait",), called)  # raises NondeterminismError
        deadline = opened.payload.get("deadline")
    else:
        deadline = time.time() + timeout if timeout is not None else None
        ctx.record("wait", {"pos": pos, "name": name, "deadline": deadline})

    def poll() -> tuple[bool, Any]:
        with ctx.owned_write():
            event = ctx.journal.consume_event(name, entry={"pos": pos})
        return (True, event.payload) if event is not None else (False, None)

    done, payload = ctx.block(poll, deadline, wake_on={"event": name})
    if done:
        return payload
    ctx.record("timeout", {"pos": pos, "name": name})
    return None


def sleep(seconds: float) -> None:
    """Sleep durably: a worker restart does not reset the clock, and a long sleep holds
    no worker (the run is parked and claimed again when the time comes)."""
    ctx = current()
    if ctx is None:
        time.sleep(seconds)
        return
    pos = ctx.next_position()
    opened = ctx.recorded(pos, ("sleep",), "torpor.sleep()")
    if opened is not None:
        until = float(opened.payload["until"])
    else:
        ctx.boundary()
        until = time.time() + max(0.0, seconds)
        ctx.record("sleep", {"pos": pos, "until": until, "seconds": seconds})
        with ctx.owned_write():
            ctx.journal.add_timer(f"sleep@{pos}", until)
    if time.time() < until:
        ctx.block(lambda: (False, None), until)
