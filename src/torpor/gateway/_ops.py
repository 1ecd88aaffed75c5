"""The gateway's operations, typed: one model per request a sandbox may send, validated on
the worker's side before anything is done (what comes out of a sandbox is hostile input).

A reply is ``{"result": ...}``, optionally with ``"stop": "after" | "retry"`` (the sandbox
stops itself once the reply is read; see `GatewayClient`), or ``{"error": ...}`` in the
engine's error codec, so that an error keeps its type and fields across the boundary.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .._errors import TorporError
from .._model import Road

__all__ = [
    "AddTimer",
    "Append",
    "AppendResult",
    "CallHost",
    "ConsumeEvent",
    "End",
    "Exit",
    "GatewayRequestError",
    "GetChild",
    "Hello",
    "Op",
    "Park",
    "Read",
    "Safepoint",
    "StartChild",
    "parse_request",
]

_Name = Annotated[str, Field(min_length=1, max_length=200)]
_Seq = Annotated[int, Field(ge=0)]
# A moment as seconds since the epoch, finite and before the year 5000.
_Time = Annotated[float, Field(ge=0, le=95_617_584_000, allow_inf_nan=False)]


def _wakes(wake_on: dict[str, str]) -> dict[str, str]:
    unknown = set(wake_on) - {"event", "child"}
    if unknown:
        raise ValueError(f"a wait wakes on an event or a child, not {sorted(unknown)}")
    return wake_on


class GatewayRequestError(TorporError):
    """A sandbox sent a request that is no gateway operation, or malformed."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"bad gateway request: {problem}")
        self.problem = problem


class Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Hello(Op):
    """The runner's first call: the run it executes."""

    op: Literal["hello"] = "hello"


class Read(Op):
    op: Literal["read"] = "read"
    after: _Seq = 0
    limit: Annotated[int, Field(ge=1, le=100_000)] | None = None


class Append(Op):
    op: Literal["append"] = "append"
    kind: _Name
    payload: Any = None


class AppendResult(Op):
    """A call's result: recorded unless recorded past ``after`` already."""

    op: Literal["append_result"] = "append_result"
    kind: _Name
    payload: dict[str, Any]
    after: _Seq


class Safepoint(Op):
    op: Literal["safepoint"] = "safepoint"
    force: bool = False


class ConsumeEvent(Op):
    op: Literal["consume_event"] = "consume_event"
    name: _Name
    entry: dict[str, Any] = Field(default_factory=dict)


class AddTimer(Op):
    op: Literal["add_timer"] = "add_timer"
    name: _Name
    fire_at: _Time


class GetChild(Op):
    op: Literal["get_child"] = "get_child"
    run_id: _Name


class StartChild(Op):
    """A child run of the sandbox's run: its id, workflow and input. ``road``, ``queue``,
    ``priority`` and ``source`` are accepted (older runners send them) and ignored: the
    worker takes them from the parent run (see `GatewayService`)."""

    op: Literal["start_child"] = "start_child"
    run_id: _Name
    workflow: _Name
    input: dict[str, Any]
    road: Road | None = None
    queue: _Name | None = None
    priority: int | None = None
    source: dict[str, str] | None = None


class CallHost(Op):
    """A host call (a model call) the worker makes and records."""

    op: Literal["call_host"] = "call_host"
    pos: Annotated[int, Field(ge=1)]
    name: _Name
    kind: _Name
    call: _Name
    request: dict[str, Any]
    retries: Annotated[int, Field(ge=0, le=20)]
    backoff: Annotated[float, Field(ge=0, le=60)]
    max_backoff: Annotated[float, Field(ge=0, le=600)]
    after: _Seq


class Park(Op):
    """A wait: held until something may have changed, or the sandbox is suspended."""

    op: Literal["park"] = "park"
    deadline: _Time | None = None
    wake_on: Annotated[dict[str, _Name], AfterValidator(_wakes)] = Field(default_factory=dict)


class End(Op):
    op: Literal["end"] = "end"
    status: Literal["completed", "failed", "cancelled"]
    output: Any = None
    error: dict[str, Any] | None = None


class Exit(Op):
    """The runner is done with the run (it ended, or left it unfinished)."""

    op: Literal["exit"] = "exit"
    status: str | None = None


Request = Annotated[
    Hello | Read | Append | AppendResult | Safepoint | ConsumeEvent | AddTimer | GetChild
    | StartChild | CallHost | Park | End | Exit,
    Field(discriminator="op"),
]  # fmt: skip
_requests: TypeAdapter[Op] = TypeAdapter(Request)


def parse_request(data: Any) -> Op:
    """The operation ``data`` asks for; `GatewayRequestError` naming what is wrong."""
    try:
        return _requests.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        raise GatewayRequestError(problems) from None
