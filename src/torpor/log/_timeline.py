"""Reading a run's history: which entry answers the call at each position, through
divergences, retried errors and rollbacks; the snapshots a rollback left behind; failures in
a row; what a waiting run waits for.

Everything that interprets those entry kinds lives here, so the engine (replaying calls), the
worker (answering a restored sandbox's calls again) and the runtime (fork, resume) agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .._model import LogEntry
from ..store import Store

__all__ = [
    "FAILURE_KINDS",
    "MAX_FAILURES",
    "Timeline",
    "abandoned_snapshots",
    "describe_call",
    "failures_in_a_row",
    "recorded_since",
    "retry_position",
    "wait_is_over",
]

# Entries that answer a call at a position (``pos``), and how each names the call: a replay
# that makes another call there differs from the recorded run. `wait` and `sleep` open a wait
# that a later entry (or the clock) resolves.
_CALLS: dict[str, Callable[[dict[str, Any]], str]] = {
    "step": lambda p: str(p.get("name")),
    "model_call": lambda p: str(p.get("name")),
    "tool_result": lambda p: str(p.get("name")),
    "user": lambda p: str(p.get("name")),
    "value": lambda p: f"torpor.{p.get('name')}()",
    "patch": lambda p: f"torpor.patched({p.get('change')!r})",
    "wait": lambda p: f"torpor.wait_for_event({p.get('name')!r})",
    "event": lambda p: f"torpor.wait_for_event({p.get('name')!r})",
    "timeout": lambda p: f"torpor.wait_for_event({p.get('name')!r})",
    "sleep": lambda _: "torpor.sleep()",
    "child": lambda p: f"torpor.start({p.get('workflow')})",
    "child_result": lambda p: f"result of child run {p.get('child')}",
}

# Entries that record an execution ended by torpor, not by the workflow: the run is retried
# elsewhere, and failed after MAX_FAILURES of them in a row.
FAILURE_KINDS = ("sandbox_died", "executor_failed")
MAX_FAILURES = 3
# What a new execution writes before its workflow makes progress: not progress itself.
_CLAIM_KINDS = ("restored", "recovered", "warning")


def _fields(entry: LogEntry) -> dict[str, Any]:
    return entry.payload if isinstance(entry.payload, dict) else {}


def describe_call(entry: LogEntry) -> str:
    """The call an entry at a position answers, as the workflow's code names it."""
    return _CALLS[entry.kind](_fields(entry))


@dataclass
class Timeline:
    """The calls of a run by position, as far as its log has been read (`absorb`).

    - a ``divergence`` at a position drops what was recorded there: what follows replaces it;
    - ``resumed`` with a ``retry`` position forgets the step error that ended the run;
    - a ``rollback`` (`torpor resume --from SNAPSHOT`) forgets everything recorded after its
      ``to_seq``: that history stays in the log but no longer answers calls.
    """

    at: dict[int, list[LogEntry]] = field(default_factory=dict)
    # Positions a warning was logged for: said once per position, not once per replay.
    warned: set[int] = field(default_factory=set)
    rollbacks: int = 0
    last_seq: int = 0

    def absorb(self, entries: Iterable[LogEntry]) -> None:
        for entry in entries:
            self.last_seq = max(self.last_seq, entry.seq)
            payload = _fields(entry)
            pos, at = payload.get("pos"), payload.get("at")
            if isinstance(pos, int) and entry.kind in _CALLS:
                self.at.setdefault(pos, []).append(entry)
            elif entry.kind == "divergence" and isinstance(at, int):
                self.at.pop(at, None)
            elif entry.kind == "warning" and isinstance(at, int):
                self.warned.add(at)
            elif entry.kind == "resumed" and isinstance(payload.get("retry"), int):
                retry = payload["retry"]
                kept = [e for e in self.at.get(retry, []) if "error" not in _fields(e)]
                self._set(retry, kept)
            elif entry.kind == "rollback" and isinstance(payload.get("to_seq"), int):
                for position in list(self.at):
                    self._set(
                        position, [e for e in self.at[position] if e.seq <= payload["to_seq"]]
                    )
                self.rollbacks += 1

    def _set(self, pos: int, entries: list[LogEntry]) -> None:
        if entries:
            self.at[pos] = entries
        else:
            self.at.pop(pos, None)

    def answer(self, pos: int, kinds: tuple[str, ...]) -> LogEntry | None:
        """The newest entry of one of ``kinds`` at ``pos``."""
        for entry in reversed(self.at.get(pos, ())):
            if entry.kind in kinds:
                return entry
        return None


def recorded_since(entries: Iterable[LogEntry], kind: str, pos: Any) -> LogEntry | None:
    """The entry of ``kind`` at call position ``pos`` among ``entries`` (a log's tail) that a
    later rollback did not undo: a call sent again (after a lost reply, or by a copy restored
    from a snapshot taken before its answer was recorded) is answered with it."""
    if not isinstance(pos, int):
        return None
    tail = Timeline()
    tail.absorb(entries)
    return tail.answer(pos, (kind,))


def abandoned_snapshots(entries: Iterable[LogEntry]) -> set[str]:
    """Snapshots of timelines `resume --from` rolled the run back from: never restored
    into the run again (they can still be forked)."""
    left: set[str] = set()
    for entry in entries:
        if entry.kind == "rollback":
            left.update(_fields(entry).get("abandoned", []))
    return left


def failures_in_a_row(store: Store, run_id: str) -> int:
    """Failures since the run last made progress. Counting claims instead (the run's
    ``attempt``) would fail a long-lived run that was woken three times at its first
    hiccup."""
    count = 0
    for entry in reversed(store.read(run_id)):
        if entry.kind in FAILURE_KINDS:
            count += 1
        elif entry.kind not in _CLAIM_KINDS:
            break
    return count


def retry_position(entries: Iterable[LogEntry]) -> int | None:
    """The position of the step whose recorded error ended the run, if that is how it
    ended: `resume` lets that step run again."""
    last = None
    for entry in entries:
        if isinstance(_fields(entry).get("pos"), int):
            last = entry
    if last is not None and last.kind == "step" and "error" in _fields(last):
        return int(_fields(last)["pos"])
    return None


def wait_is_over(store: Store, run_id: str, wake_on: dict[str, str]) -> bool:
    """Whether what a waiting run waits for has come: an event not yet consumed, or the end
    of a child run."""
    if "event" in wake_on:
        return any(
            e.name == wake_on["event"] and e.consumed_seq is None for e in store.list_events(run_id)
        )
    if "child" in wake_on:
        return store.get_run(wake_on["child"]).status.terminal
    return False
