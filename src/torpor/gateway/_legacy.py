"""The gateway protocol of torpor 0.1, still answered: a run suspended (or snapshotted) by
0.1 is restored as the process it was, which speaks that protocol until it ends. Each of its
requests is translated into today's typed operation, checked like any other, and the reply
is given in the form that process expects.

0.1 requests carry no version: they are told apart by their ``op`` names and fields, which
today's protocol does not use (``model``, ``update_run``, ``get_run``, ``create_run``,
``spawn``; ``append`` with ``once_after`` or ``expected_seq``; ``safepoint`` with ``pos``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .._model import RunRecord

__all__ = ["from_legacy", "is_legacy", "legacy_error", "legacy_reply"]

_LEGACY_OPS = {"model", "update_run", "get_run", "create_run", "spawn"}
_TERMINAL = {"completed", "failed", "cancelled"}


def is_legacy(request: Any) -> bool:
    if not isinstance(request, dict):
        return False
    op = request.get("op")
    return (
        op in _LEGACY_OPS
        or (op == "append" and ("once_after" in request or "expected_seq" in request))
        or (op == "safepoint" and "pos" in request)
    )


def from_legacy(request: dict[str, Any]) -> dict[str, Any]:
    """Today's request for a 0.1 request (validated afterwards like any other)."""
    op = request.get("op")
    if op == "append":
        if request.get("once_after") is not None:
            return {"op": "append_result", "kind": request.get("kind"),
                    "payload": request.get("payload"), "after": request["once_after"]}  # fmt: skip
        return {"op": "append", "kind": request.get("kind"), "payload": request.get("payload")}
    if op == "safepoint":
        return {"op": "safepoint", "force": bool(request.get("force", False))}
    if op == "model":
        spec = request.get("request") or {}
        return {
            "op": "call_host", "pos": request.get("pos"), "name": request.get("name"),
            "kind": request.get("kind"), "call": "torpor.model", "request": spec,
            "retries": spec.get("retries", 4) if isinstance(spec, dict) else 4,
            "backoff": 1.0, "max_backoff": 30.0, "after": request.get("after") or 0,
        }  # fmt: skip
    if op == "update_run":
        status = request.get("status")
        if status in _TERMINAL:
            return {"op": "end", "status": status, "output": request.get("output"),
                    "error": request.get("error")}  # fmt: skip
        return {"op": "hello"}  # 0.1 set no other status from inside: answer with the run
    if op == "get_run":
        return {"op": "get_child", "run_id": request.get("run_id")}
    if op == "create_run":
        return {"op": "start_child", "run_id": request.get("run_id"),
                "workflow": request.get("workflow"), "road": request.get("road", "replay"),
                "input": request.get("input") or {}, "queue": request.get("queue", "default"),
                "priority": request.get("priority", 0),
                "source": request.get("source") or {}}  # fmt: skip
    if op == "spawn":
        return {"op": "get_child", "run_id": request.get("run_id")}
    return request


def _record(record: RunRecord) -> dict[str, Any]:
    """A run as 0.1's runner rebuilds it: every field, enums as values, times as numbers."""
    data = dataclasses.asdict(record)
    data["road"], data["status"] = record.road.value, record.status.value
    return data


def legacy_reply(request: dict[str, Any], result: Any, run: RunRecord, child: Any) -> Any:
    """The result of a 0.1 request in the form that process reads. ``child``: the record of
    the child run a ``get_run``/``create_run`` named, when there is one."""
    op = request.get("op")
    if op == "model":
        return result["payload"]
    if op in ("get_run", "create_run"):
        return _record(child)
    if op == "update_run":
        return _record(run)
    if op == "spawn":
        return None
    return result


def legacy_error(exc: BaseException) -> dict[str, Any]:
    """An error as 0.1's runner decodes it: a `FencedError` by its fields, others by name."""
    fields = vars(exc)
    if type(exc).__name__ == "FencedError":
        return {"type": "FencedError", "run_id": fields.get("run_id"),
                "epoch": fields.get("epoch"), "current": fields.get("current_epoch")}  # fmt: skip
    return {"type": type(exc).__name__, "message": str(fields.get("message", exc))}
