"""The HTTP API over one store: `create_app(store, token)`.

The server enqueues runs and reads and changes their state; `torpor worker` processes
execute them. Every endpoint but ``/healthz`` (``/v1``, ``/metrics``, ``/openapi.json``) needs
the bearer token, or the dashboard's session cookie (``/dashboard/``, see `_dashboard`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response, Security
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPBearer

from .. import __version__
from .. import runtime as _runtime
from .._errors import TorporError, WorkflowNotFoundError
from .._model import LogEntry, Road, RunRecord, RunStatus
from ..engine import load_workflow_ref
from ..store import Store
from ._auth import check_bearer
from ._dashboard import SESSION_COOKIE, install_dashboard, require_session
from ._errors import ApiError, BodyLimit, install_error_handlers
from ._metrics import StoreMetrics
from ._schemas import (
    MAX_INT,
    NAME_PATTERN,
    ErrorOut,
    EventOut,
    ForkRequest,
    HealthOut,
    LogEntryOut,
    ResumeRequest,
    RunOut,
    SnapshotOut,
    StartRequest,
)

__all__ = ["create_app"]

# Keyword arguments of a workflow that `start` would take for its own.
_START_OPTIONS = frozenset(
    name
    for name, param in inspect.signature(_runtime.start).parameters.items()
    if param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
)

# Envelope room beyond the store's payload limit, so an oversized *payload* reaches the
# store and gets its precise PayloadTooLargeError.
_BODY_OVERHEAD = 64 * 1024

# One event of the log stream (before OpenAPI 3.2, an event stream's schema is per event).
_SSE_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["entry", "end"]},
        "id": {"type": "string", "description": "entry: the entry's seq."},
        "data": {
            "type": "string",
            "description": "entry: the entry as JSON, {seq, kind, payload, created_at}; end: "
            '{"status": the run\'s final status}.',
        },
    },
}

# Declares the scheme in the OpenAPI schema; `authenticate` checks the header itself, to
# tell a missing token (401) from a wrong one (403).
_BEARER = HTTPBearer(auto_error=False, description="The token `torpor server` printed.")

RunIdPath = Annotated[str, PathParam(min_length=1, max_length=1000, pattern=NAME_PATTERN)]
EventNamePath = Annotated[str, PathParam(min_length=1, max_length=1000, pattern=NAME_PATTERN)]

# The event endpoint reads its body itself (any JSON value, or none), so it declares it here.
_PAYLOAD_BODY = {
    "required": False,
    "description": "The payload: any JSON value (no body: null).",
    "content": {"application/json": {"schema": {}}},
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (400, "Malformed request (invalid JSON, a refused value)."),
        (401, "No bearer token."),
        (403, "Wrong bearer token."),
        (404, "No such run."),
        (409, "The run's state forbids it (e.g. it has ended)."),
        (413, "Body or payload over the size limit."),
        (415, "The body is not sent as application/json."),
        (422, "A field is missing or has the wrong type or range."),
        (503, "The store is unavailable."),
    )
}


def create_app(store: Store, token: str, *, max_body_bytes: int | None = None) -> FastAPI:
    """The API over ``store``; requests must carry ``Authorization: Bearer <token>``.

    Bodies over ``max_body_bytes`` (default: the store's payload limit plus 64 KiB) get 413.
    """
    if not token:
        raise TorporError("the API token is empty; set TORPOR_API_TOKEN or let torpor make one")
    app = FastAPI(
        title="torpor",
        version=__version__,
        description="Durable execution for long-running LLM agents: runs, their context "
        "logs, events and snapshots. Authenticate with `Authorization: Bearer <token>`.",
        docs_url=None,  # the interactive pages load scripts from a CDN; the schema suffices
        redoc_url=None,
        openapi_url=None,  # served below, behind the token like every route but /healthz
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=max_body_bytes or store.max_payload_bytes + _BODY_OVERHEAD)
    metrics = StoreMetrics(store)

    def authenticate(request: Request, _: Annotated[Any, Security(_BEARER)] = None) -> None:
        ok = check_bearer(request.headers.get("authorization"), token)
        if ok is None and request.cookies.get(SESSION_COOKIE):
            require_session(request, token)  # the dashboard's pages calling the API
            return
        if ok is None:
            raise ApiError(
                401,
                "Unauthorized",
                "this endpoint needs 'Authorization: Bearer <token>'; the token is in "
                "TORPOR_API_TOKEN or $TORPOR_HOME/api-token on the server's machine",
            )
        if not ok:
            raise ApiError(403, "Forbidden", "the bearer token is wrong")

    @app.get(
        "/healthz",
        response_model=HealthOut,
        tags=["service"],
        responses={503: {"model": HealthOut, "description": "The store is unavailable."}},
    )
    def healthz() -> Any:
        """Liveness and store reachability; needs no token."""
        try:
            store.schema_version()
        except Exception:
            return Response(
                json.dumps({"status": "unavailable", "version": __version__}),
                status_code=503,
                media_type="application/json",
            )
        return {"status": "ok", "version": __version__}

    @app.get(
        "/metrics",
        tags=["service"],
        dependencies=[Depends(authenticate)],
        response_class=Response,
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "Prometheus text exposition format.",
            },
            **_ERRORS,
        },
    )
    def metrics_endpoint() -> Response:
        """Runs by status, bytes stored, snapshot and step latencies (Prometheus text)."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get(
        "/openapi.json",
        tags=["service"],
        dependencies=[Depends(authenticate)],
        include_in_schema=False,
    )
    def openapi_schema() -> Any:
        """The OpenAPI schema: it names every route and field, so it needs the token too."""
        return app.openapi()

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authenticate)], responses=_ERRORS)

    @v1.post("/runs", response_model=RunOut, status_code=201, tags=["runs"])
    def start_run(body: StartRequest) -> Any:
        """Enqueue a run of a workflow; `torpor worker` processes execute it."""
        try:
            wf = load_workflow_ref(body.workflow)
        except WorkflowNotFoundError as exc:
            # Its own message advises about workers; this one is the server's.
            raise ApiError(
                422,
                "WorkflowNotFoundError",
                f"workflow {exc.workflow!r} cannot be loaded: {exc.reason}",
                workflow=exc.workflow,
                reason=exc.reason,
            ) from None
        if clash := sorted(_START_OPTIONS & body.kwargs.keys()):
            raise ApiError(
                422,
                "ValidationError",
                f"kwargs {', '.join(map(repr, clash))}: these names are torpor.start's own "
                "options; pass those arguments positionally, in 'args'",
            )
        run = _runtime.start(
            wf.name,
            *body.args,
            road=body.road,
            detach=True,
            store=store,
            queue=body.queue,
            priority=body.priority,
            **body.kwargs,
        )
        return run.record().to_json()

    @v1.get("/runs", response_model=list[RunOut], tags=["runs"])  # type: ignore[valid-type]
    def list_runs(
        status: Annotated[list[RunStatus] | None, Query(description="Only these (repeat).")] = None,
        limit: Annotated[int | None, Query(ge=1, le=MAX_INT, description="Newest N.")] = None,
    ) -> Any:
        """Runs, newest first (all statuses unless ``status`` is given)."""
        return [r.to_json() for r in store.list_runs(statuses=status or None, limit=limit)]

    @v1.get("/runs/{run_id}", response_model=RunOut, tags=["runs"])
    def get_run(run_id: RunIdPath) -> Any:
        return store.get_run(run_id).to_json()

    @v1.get("/runs/{run_id}/log", response_model=list[LogEntryOut], tags=["log"])
    def read_log(
        run_id: RunIdPath,
        after: Annotated[int, Query(ge=0, le=MAX_INT, description="Entries after this seq.")] = 0,
        limit: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
    ) -> Any:
        """A run's context log, in order."""
        return [e.to_json() for e in store.read(run_id, after=after, limit=limit)]

    @v1.get(
        "/runs/{run_id}/log/stream",
        tags=["log"],
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/event-stream": {"schema": _SSE_EVENT}},
                "description": "Server-sent events: `entry` per log entry (id: its "
                "seq, data: the entry as JSON), then `end` when the run ends.",
            }
        },
    )
    async def stream_log(
        run_id: RunIdPath,
        after: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
        last_event_id: Annotated[str | None, Header(include_in_schema=False)] = None,
    ) -> StreamingResponse:
        """Follow a run's log: entries as they land; the stream ends when the run ends."""
        if last_event_id and last_event_id.isdigit():  # an EventSource reconnecting
            after = max(after, min(int(last_event_id), MAX_INT))
        await run_in_threadpool(store.get_run, run_id)  # 404 now, not inside the stream
        return StreamingResponse(
            _sse(store, run_id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @v1.post(
        # `:path`: an event name may hold a slash (sent as %2F, which routing decodes).
        "/runs/{run_id}/events/{name:path}",
        response_model=EventOut,
        status_code=201,
        tags=["events"],
        openapi_extra={"requestBody": _PAYLOAD_BODY},
    )
    async def send_event(run_id: RunIdPath, name: EventNamePath, request: Request) -> Any:
        """Deliver event ``name`` to a run (it may be waiting for it, or wait later)."""
        payload = _parse_json(await request.body())
        event = await run_in_threadpool(store.send_event, run_id, name, payload)
        return event.to_json()

    @v1.post("/runs/{run_id}/cancel", response_model=RunOut, tags=["runs"])
    def cancel_run(run_id: RunIdPath) -> Any:
        """Cancel at once, or at the next step boundary if a worker executes the run."""
        return store.cancel_run(run_id).to_json()

    @v1.post("/runs/{run_id}/fork", response_model=RunOut, status_code=201, tags=["runs"])
    def fork_run(run_id: RunIdPath, body: ForkRequest | None = None) -> Any:
        """A new run reusing the recorded results of calls before ``at`` (replay road), or
        restoring ``snapshot`` (snapshot road); workers execute it."""
        at: int | str | None = body.at if body is not None else None
        if body is not None and body.snapshot is not None:
            if body.at is not None:
                raise ApiError(422, "ValidationError", "give either 'at' or 'snapshot', not both")
            if store.get_run(run_id).road is not Road.SNAPSHOT:
                raise TorporError(
                    f"run {run_id} is on the replay road: it has no snapshots; fork it at a "
                    "call position with 'at'"
                )
            at = body.snapshot
        return _runtime.fork(run_id, at, detach=True, store=store).record().to_json()

    @v1.post("/runs/{run_id}/resume", response_model=RunOut, tags=["runs"])
    def resume_run(run_id: RunIdPath, body: ResumeRequest | None = None) -> Any:
        """Queue a failed or cancelled run again; recorded results are kept. With
        ``snapshot`` (snapshot road): roll the run back to that snapshot of its own."""
        snapshot = body.snapshot if body is not None else None
        run = _runtime.resume(run_id, from_snapshot=snapshot, detach=True, store=store)
        return run.record().to_json()

    @v1.get("/runs/{run_id}/snapshots", response_model=list[SnapshotOut], tags=["snapshots"])
    def list_snapshots(run_id: RunIdPath) -> Any:
        return [s.to_json() for s in store.list_snapshots(run_id)]

    @v1.post(
        "/runs/{run_id}/snapshot", response_model=SnapshotOut, status_code=201, tags=["snapshots"]
    )
    def checkpoint(run_id: RunIdPath) -> Any:
        """Checkpoint a running snapshot-road run now (waits up to 60 s for its worker)."""
        return _runtime.checkpoint_now(store, run_id).to_json()

    app.include_router(v1)
    install_dashboard(app, token)
    return app


def _parse_json(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ApiError(400, "InvalidJSON", f"the request body is not UTF-8: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            "InvalidJSON",
            f"the request body is not valid JSON ({exc.msg} at line {exc.lineno} column "
            f'{exc.colno}); send a JSON value, e.g. {{"ok": true}} or "yes"',
        ) from None


# An idle log stream gets a comment line this often: proxies keep it open, and the server
# notices a client that went away.
_KEEP_ALIVE_S = 15.0
# Entries read ahead of a slow client, at most.
_READ_AHEAD = 1000


class _ClientGone(Exception):
    pass


class _StreamView:
    """The store as one log stream's `Store.follow` reads it.

    Follow has no way to be told to stop, and between entries it blocks in its polling:
    once the client has gone, the view's next read ends the follow instead, so its thread
    outlives the stream by one poll (at most a second). The view also keeps the run as
    follow last saw it, whose status the stream's ``end`` event reports.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.gone = threading.Event()
        self.run: RunRecord | None = None

    def get_run(self, run_id: str) -> RunRecord:
        self._check()
        self.run = self.store.get_run(run_id)
        return self.run

    def read(self, run_id: str, after: int = 0, limit: int | None = None) -> list[LogEntry]:
        self._check()
        return self.store.read(run_id, after=after, limit=limit)

    def _check(self) -> None:
        if self.gone.is_set():
            raise _ClientGone


async def _sse(store: Store, run_id: str, after: int) -> AsyncIterator[str]:
    """Server-sent events of a run's log: `Store.follow` in a thread of its own (a stream
    may last for days; it must not hold one of the pool's threads), its entries handed over
    as they come."""
    loop = asyncio.get_running_loop()
    handed: asyncio.Queue[LogEntry | BaseException | None] = asyncio.Queue()
    room = threading.Semaphore(_READ_AHEAD)
    view = _StreamView(store)

    def hand_over(item: LogEntry | BaseException | None) -> bool:
        if view.gone.is_set():
            return False
        try:
            loop.call_soon_threadsafe(handed.put_nowait, item)
        except RuntimeError:  # the event loop has closed: the server stopped
            return False
        return True

    def pump() -> None:
        outcome: BaseException | None = None  # None: the run ended
        try:
            for entry in Store.follow(cast(Store, view), run_id, after, stop_when_final=True):
                while not room.acquire(timeout=1.0):
                    if view.gone.is_set():
                        return
                if not hand_over(entry):
                    return
        except _ClientGone:
            return
        except Exception as exc:  # the store failed: the stream ends with its error
            outcome = exc
        hand_over(outcome)

    threading.Thread(target=pump, name=f"torpor-follow-{run_id}", daemon=True).start()
    try:
        while True:
            try:
                item = await asyncio.wait_for(handed.get(), _KEEP_ALIVE_S)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            room.release()
            data = json.dumps(item.to_json(), ensure_ascii=False)
            yield f"id: {item.seq}\nevent: entry\ndata: {data}\n\n"
    finally:
        view.gone.set()
    assert view.run is not None  # follow ends when it sees the run ended
    yield f"event: end\ndata: {json.dumps({'status': view.run.status.value})}\n\n"
