"""The journal of an execution inside a snapshot-road sandbox: every call goes to the
worker through the gateway, which checks it, does it under the run's claim, and answers.

The process may be a copy restored from a snapshot, its memory holding the journal as it was
then: it is `lagging`, so the engine reads the log's tail before taking a call as new.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._model import Event, LogEntry, RunRecord, RunStatus
from ..engine import ChildSpec, HostCall, HostCallOutcome
from ..store import Appended
from ._client import GatewayClient
from ._ops import (
    AddTimer,
    Append,
    AppendResult,
    CallHost,
    ConsumeEvent,
    End,
    GetChild,
    Park,
    Read,
    Safepoint,
    StartChild,
)

__all__ = ["SANDBOX_WORKSPACE", "GatewayJournal"]

# The run's workspace as the sandbox sees it (checkpointed with the process).
SANDBOX_WORKSPACE = Path("/workspace")


def _appended(result: dict[str, Any]) -> Appended:
    return Appended(int(result["seq"]), bool(result["cancel_requested"]))


@dataclass
class GatewayJournal:
    """`Journal` answered by the worker through ``client``."""

    client: GatewayClient
    run: RunRecord
    lagging: bool = True
    workspace: Path = SANDBOX_WORKSPACE

    def read(self, after: int = 0) -> list[LogEntry]:
        rows = self.client.call(Read(after=after))
        return [LogEntry.from_json(row, self.run.id) for row in rows]

    def append(self, kind: str, payload: Any) -> Appended:
        return _appended(self.client.call(Append(kind=kind, payload=payload)))

    def append_result(self, kind: str, payload: dict[str, Any], *, after: int) -> Appended:
        # A copy restored from a snapshot taken after the step's body comes back here with
        # the result possibly recorded already: the worker records it once, looking past
        # what this process has read.
        return _appended(self.client.call(AppendResult(kind=kind, payload=payload, after=after)))

    def safepoint(self, *, force: bool) -> None:
        self.client.call(Safepoint(force=force))

    def set_status(self, status: RunStatus) -> None:
        """The worker keeps the run's status."""

    def hold(self, deadline: float | None, wake_on: dict[str, str], waited: float) -> None:
        # The worker holds this call until something may have changed, or suspends the
        # sandbox (stop, then retry once restored) if the wait is long.
        self.client.call(Park(deadline=deadline, wake_on=wake_on))

    def consume_event(self, name: str, entry: dict[str, Any]) -> Event | None:
        result = self.client.call(ConsumeEvent(name=name, entry=entry))
        if result is None:
            return None
        return Event(
            int(result["id"]), self.run.id, name, result.get("payload"),
            float(result["created_at"]), result.get("consumed_seq"),
        )  # fmt: skip

    def add_timer(self, name: str, fire_at: float) -> None:
        self.client.call(AddTimer(name=name, fire_at=fire_at))

    def child(self, run_id: str) -> RunRecord:
        return RunRecord.from_json(self.client.call(GetChild(run_id=run_id)))

    def start_child(self, child: ChildSpec) -> None:
        # The worker decides the child's road, source, queue and priority (its parent's;
        # the snapshot road): what the code in a sandbox names is not trusted.
        self.client.call(StartChild(run_id=child.run_id, workflow=child.workflow,
                                    input=child.input))  # fmt: skip

    def host_call(self, call: HostCall, before_attempt: Callable[[], None]) -> HostCallOutcome:
        result: dict[str, Any] = self.client.call(
            CallHost(
                pos=call.pos, name=call.name, kind=call.kind, call=call.call,
                request=call.request, retries=call.retries, backoff=call.backoff,
                max_backoff=call.max_backoff, after=call.after,
            )
        )  # fmt: skip
        return HostCallOutcome(result["payload"], bool(result["cancel_requested"]))

    def end(self, status: RunStatus, *, output: Any = None, error: Any = None) -> bool:
        end = End.model_validate({"status": status.value, "output": output, "error": error})
        return bool(self.client.call(end))

    def release(self) -> None:
        """Never asked: a sandboxed run is released by its worker, which checkpoints it."""
