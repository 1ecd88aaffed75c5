"""Every failure becomes ``{"error": {"type", "message", "details"}}`` with a fitting status:
torpor's errors keep their class name and message, bad input is a 4xx, never a 500."""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._errors import (
    ConfigError,
    FencedError,
    LogConflictError,
    PayloadTooLargeError,
    RunNotFoundError,
    RunStateError,
    StoreUnavailableError,
    TorporError,
    WorkflowNotFoundError,
)

__all__ = ["ApiError", "BodyLimit", "error_response", "install_error_handlers"]

log = logging.getLogger("torpor.server")

_STATUS: list[tuple[type[TorporError], int]] = [
    (RunNotFoundError, 404),
    (RunStateError, 409),
    (LogConflictError, 409),
    (FencedError, 409),
    (PayloadTooLargeError, 413),
    (WorkflowNotFoundError, 422),
    (StoreUnavailableError, 503),
    (ConfigError, 500),
]


class ApiError(Exception):
    """An HTTP-level refusal (authentication, not implemented, bad body)."""

    def __init__(self, status: int, type: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.details = details


def error_response(
    status: int, type: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    body = {"error": {"type": type, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status, headers=headers)


def _details(exc: TorporError) -> dict[str, Any]:
    """The error's structured fields, those JSON can carry (a client rebuilds the error)."""
    out: dict[str, Any] = {}
    for key, value in vars(exc).items():
        if key == "message" or key.startswith("_"):
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out


def _validation_message(exc: RequestValidationError, content_type: str) -> tuple[int, str, str]:
    errors = list(exc.errors())
    for err in errors:
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "malformed")
            return 400, "InvalidJSON", f"the request body is not valid JSON: {reason}"
    media = content_type.partition(";")[0].strip().lower()
    body_errors = any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors)
    if body_errors and media != "application/json" and not media.endswith("+json"):
        # FastAPI parses only bodies declared JSON; anything else reaches validation as bytes.
        return (
            415,
            "UnsupportedMediaType",
            "the request body must be JSON sent with 'Content-Type: application/json' "
            f"(this one had {repr(media) if media else 'no Content-Type'})",
        )
    parts = []
    for err in errors[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "ValidationError", "; ".join(parts) + more


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.type, exc.message, exc.details)

    async def on_torpor_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TorporError)
        status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 400)
        if status >= 500:
            log.error("%s: %s", type(exc).__name__, exc.message)
        return error_response(status, type(exc).__name__, exc.message, _details(exc))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        status, kind, message = _validation_message(exc, request.headers.get("content-type", ""))
        return error_response(status, kind, message)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kinds = {404: "NotFound", 405: "MethodNotAllowed"}
        kind = kinds.get(exc.status_code, "HTTPError")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = "no such endpoint; GET /openapi.json lists them"
        elif exc.status_code == 400 and message == "There was an error parsing the body":
            # FastAPI's word for a body json.loads gave up on (e.g. nested too deeply).
            kind = "InvalidJSON"
            message = (
                "the request body cannot be parsed as JSON (nested too deeply?); send JSON "
                "nested at most a few hundred levels"
            )
        response = error_response(exc.status_code, kind, message)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    async def on_unicode(_: Request, exc: Exception) -> JSONResponse:
        # JSON can spell lone surrogates (\ud800) that no database can store as text.
        return error_response(
            400, "InvalidText", f"the request holds text that is not valid Unicode: {exc}"
        )

    async def on_database(_: Request, exc: Exception) -> JSONResponse:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.error("store error: %s", first)
        return error_response(503, "StoreError", f"store error: {first}")

    async def on_too_deep(_: Request, exc: Exception) -> JSONResponse:
        # json.loads (FastAPI's or ours) gives up on arrays nested ~1000 deep with a
        # RecursionError: bad input, answered in one line, not an internal error.
        return error_response(
            400,
            "InvalidJSON",
            "the request body nests arrays or objects too deeply to parse; send JSON "
            "nested at most a few hundred levels",
        )

    async def on_anything(_: Request, exc: Exception) -> JSONResponse:
        log.error("internal error", exc_info=exc)
        return error_response(
            500, "InternalError", f"internal error ({type(exc).__name__}); see the server's log"
        )

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(TorporError, on_torpor_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(UnicodeError, on_unicode)
    app.add_exception_handler(sqlite3.Error, on_database)
    app.add_exception_handler(psycopg.Error, on_database)
    app.add_exception_handler(RecursionError, on_too_deep)
    app.add_exception_handler(Exception, on_anything)


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with a 413, before the app parses them.

    A declared Content-Length over the limit is refused unread; a chunked body is read up to
    the limit. The rest of an oversized body (up to ``drain``) is read and discarded first,
    so the client, still sending, gets the 413 rather than a reset connection.
    """

    def __init__(self, app: ASGIApp, limit: int, drain: int = 64 * 1024 * 1024) -> None:
        self.app = app
        self.limit = limit
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await error_response(400, "BadRequest", "Content-Length is not a number")(
                        scope, receive, send
                    )
                    return
        if declared is not None and declared > self.limit + self.drain:
            await self._too_large(scope, receive, send, declared)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            more = bool(message.get("more_body", False))
            if size > self.limit:
                if size > self.limit + self.drain:
                    break
                continue  # keep draining, drop the bytes
            chunks.append(body)
        if size > self.limit:
            await self._too_large(scope, receive, send, declared)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # http.disconnect, for streaming responses

        await self.app(scope, replay, send)

    async def _too_large(
        self, scope: Scope, receive: Receive, send: Send, size: int | None
    ) -> None:
        what = f"is {size:,} bytes" if size is not None else "is larger than that"
        message = (
            f"the request body {what}, over the limit of {self.limit:,} bytes; store large "
            "data elsewhere and send a reference, or raise TORPOR_MAX_PAYLOAD_BYTES"
        )
        await error_response(413, "PayloadTooLarge", message, {"limit": self.limit})(
            scope, receive, send
        )
