"""`torpor.Client`: the HTTP API from Python, returning the store's own record types."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx2

from .. import _errors
from .._errors import TorporError, _rebuild
from .._model import Event, LogEntry, Road, RunRecord, RunStatus, SnapshotRecord, from_iso

__all__ = ["Client"]

# A follow that loses its connection (server restart, proxy timeout) reconnects from the
# last entry it saw; after this many failures in a row it gives up.
_FOLLOW_RETRIES = 5


class Client:
    """A client of `torpor server`.

    Args:
        url: the server, e.g. ``http://127.0.0.1:8480``.
        token: the API token (default: ``TORPOR_API_TOKEN``).
        timeout: seconds to wait for a response (following a log waits longer).

    Errors the server reports come back as the same torpor exceptions the store raises
    (`RunNotFoundError`, `RunStateError`, `PayloadTooLargeError`, ...); anything else,
    including authentication failures and an unreachable server, as `TorporError`.
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get("TORPOR_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx2.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- runs -----------------------------------------------------------------------------

    def start(
        self,
        workflow: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        road: str | Road = Road.REPLAY,
        queue: str = "default",
        priority: int = 0,
    ) -> RunRecord:
        """Enqueue a run of ``workflow`` (a name registered in the server, or FILE:FUNC on
        the server's machine) for workers; returns the queued run."""
        body = {
            "workflow": workflow,
            "args": list(args),
            "kwargs": dict(kwargs or {}),
            "road": Road(road).value,
            "queue": queue,
            "priority": priority,
        }
        return RunRecord.from_json(self._call("POST", "/v1/runs", json=body))

    def get_run(self, run_id: str) -> RunRecord:
        return RunRecord.from_json(self._call("GET", f"/v1/runs/{_seg(run_id)}"))

    def list_runs(
        self, *, statuses: Sequence[RunStatus | str] | None = None, limit: int | None = None
    ) -> list[RunRecord]:
        """Runs, newest first, optionally only those with the given statuses."""
        params: list[tuple[str, str | int]] = [
            ("status", RunStatus(s).value) for s in statuses or ()
        ]
        if limit is not None:
            params.append(("limit", limit))
        return [RunRecord.from_json(r) for r in self._call("GET", "/v1/runs", params=params)]

    def cancel(self, run_id: str) -> RunRecord:
        """Cancel at once, or at its next step boundary if a worker executes it."""
        return RunRecord.from_json(self._call("POST", f"/v1/runs/{_seg(run_id)}/cancel"))

    def fork(self, run_id: str, at: int | str | None = None) -> RunRecord:
        """A new queued run: reusing the recorded results of calls before position ``at``
        (replay road), or restoring snapshot ``at`` (snapshot road; default the newest)."""
        path = f"/v1/runs/{_seg(run_id)}/fork"
        body = {"snapshot": at} if isinstance(at, str) else {"at": at}
        return RunRecord.from_json(self._call("POST", path, json=body))

    def resume(self, run_id: str, from_snapshot: str | None = None) -> RunRecord:
        """Queue a failed or cancelled run again; with ``from_snapshot`` (snapshot road),
        roll it back to that snapshot of its own."""
        path = f"/v1/runs/{_seg(run_id)}/resume"
        return RunRecord.from_json(self._call("POST", path, json={"snapshot": from_snapshot}))

    # -- the log and events ---------------------------------------------------------------

    def log(self, run_id: str, after: int = 0, limit: int | None = None) -> list[LogEntry]:
        """Entries with seq > ``after``, in order, at most ``limit`` of them."""
        params: dict[str, int] = {"after": after}
        if limit is not None:
            params["limit"] = limit
        data = self._call("GET", f"/v1/runs/{_seg(run_id)}/log", params=params)
        return [LogEntry.from_json(e, run_id) for e in data]

    def follow(self, run_id: str, after: int = 0) -> Iterator[LogEntry]:
        """Yield entries as they land (server-sent events) until the run ends."""
        path = f"/v1/runs/{_seg(run_id)}/log/stream"
        failures = 0
        while True:
            try:
                with self._http.stream(
                    "GET", path, params={"after": after}, timeout=httpx2.Timeout(60.0, connect=10.0)
                ) as response:
                    if response.status_code != 200:
                        response.read()
                        self._raise(response)
                    for event in httpx2.EventSource(response, max_event_size=None):
                        if event.event == "end":
                            return
                        if event.event == "entry":
                            entry = LogEntry.from_json(event.json(), run_id)  # type: ignore[arg-type]
                            after = entry.seq
                            failures = 0
                            yield entry
            except httpx2.TransportError as exc:
                failures += 1
                if failures > _FOLLOW_RETRIES:
                    raise self._unreachable(exc) from None
            else:
                failures += 1  # the stream ended without its `end` event: reconnect
                if failures > _FOLLOW_RETRIES:
                    raise TorporError(f"the log stream of {run_id} from {self.url} kept breaking")
            time.sleep(min(0.2 * 2**failures, 5.0))

    def send(self, run_id: str, name: str, payload: Any = None) -> Event:
        """Deliver event ``name`` with a JSON ``payload`` to a run."""
        path = f"/v1/runs/{_seg(run_id)}/events/{_seg(name)}"
        data = self._call("POST", path, json=payload)
        return Event(
            id=int(data["id"]),
            run_id=data["run_id"],
            name=data["name"],
            payload=data.get("payload"),
            created_at=from_iso(data["created_at"]),
            consumed_seq=None,  # just sent: not delivered yet
        )

    # -- snapshots ------------------------------------------------------------------------

    def snapshots(self, run_id: str) -> list[SnapshotRecord]:
        data = self._call("GET", f"/v1/runs/{_seg(run_id)}/snapshots")
        return [SnapshotRecord.from_json(s) for s in data]

    def checkpoint(self, run_id: str) -> SnapshotRecord:
        """Checkpoint a snapshot-road run now."""
        return SnapshotRecord.from_json(self._call("POST", f"/v1/runs/{_seg(run_id)}/snapshot"))

    def health(self) -> dict[str, Any]:
        """``/healthz``: ``{"status": "ok", "version": ...}`` (raises if the store is down)."""
        data: dict[str, Any] = self._call("GET", "/healthz")
        return data

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx2.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            self._raise(response)
        return response.json()

    def _unreachable(self, exc: Exception) -> TorporError:
        return TorporError(
            f"cannot reach the torpor server at {self.url}: {exc or type(exc).__name__}; "
            "check the URL and that `torpor server` is running"
        )

    def _raise(self, response: httpx2.Response) -> None:
        try:
            error = response.json()["error"]
            kind, message = str(error["type"]), str(error["message"])
            details = error.get("details") or {}
        except (ValueError, KeyError, TypeError):
            raise TorporError(
                f"the server at {self.url} answered {response.status_code}: {response.text[:200]!r}"
            ) from None
        cls = getattr(_errors, kind, None) if kind in _errors.__all__ else None
        if isinstance(cls, type) and issubclass(cls, TorporError):
            raise _rebuild(cls, {**details, "message": message})
        if response.status_code in (401, 403):
            message += "; pass the token to torpor.Client(url, token) or set TORPOR_API_TOKEN"
        raise TorporError(message)


def _seg(value: str) -> str:
    """A path segment: run ids and event names may hold characters URLs reserve."""
    return quote(value, safe="")
