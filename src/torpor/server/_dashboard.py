"""The dashboard: pages and scripts shipped as package data, a login that turns the API token
into a session cookie, and the check of that cookie that `authenticate` falls back to.

The pages hold no data: their scripts read everything from the ``/v1`` API with the cookie.
The cookie is HttpOnly and SameSite=Strict, and a request it authenticates that changes
state must also carry ``X-Torpor-Dashboard: 1``, a header a page on another site cannot add
without a CORS preflight this server never grants.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import time
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse

from ._errors import ApiError

__all__ = [
    "DASHBOARD_HEADER",
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "check_session",
    "install_dashboard",
    "new_session",
    "require_session",
]

SESSION_COOKIE = "torpor_session"
DASHBOARD_HEADER = "x-torpor-dashboard"
SESSION_SECONDS = 7 * 24 * 3600

# Methods a session cookie authenticates without the dashboard header: they change nothing.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

# Everything comes from this server: no inline scripts, no other origin, no framing.
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def new_session(token: str, issued: int | None = None) -> str:
    """A session cookie value: when it was issued, and a MAC of that under the token.

    The cookie is not the token itself, so it cannot be used as a bearer token, and a new
    token ends every session made with the old one.
    """
    when = int(time.time()) if issued is None else issued
    mac = hmac.new(
        token.encode(), f"torpor dashboard session {when}".encode(), hashlib.sha256
    ).hexdigest()
    return f"{when}.{mac}"


def check_session(value: str | None, token: str, now: float | None = None) -> bool | None:
    """None if there is no session cookie, else whether it is valid and not expired."""
    if not value:
        return None
    issued, _, mac = value.partition(".")
    if not issued.isdigit() or len(issued) > 12 or not mac:
        return False
    when = int(issued)
    current = time.time() if now is None else now
    if not current - SESSION_SECONDS <= when <= current + 60:
        return False
    return hmac.compare_digest(new_session(token, when).encode(), value.encode())


def require_session(request: Request, token: str) -> None:
    """Accept a request without a bearer token that has a session cookie, or refuse it.

    A state-changing request must also carry the dashboard header (see the module's doc).
    """
    if not check_session(request.cookies.get(SESSION_COOKIE), token):
        raise ApiError(
            401, "Unauthorized", "the dashboard session has expired or is not valid; log in again"
        )
    if request.method not in SAFE_METHODS and request.headers.get(DASHBOARD_HEADER) != "1":
        raise ApiError(
            403,
            "Forbidden",
            "a request authenticated by the dashboard's session cookie that changes state "
            "needs the header 'X-Torpor-Dashboard: 1'",
        )


@functools.cache
def _assets() -> dict[str, tuple[bytes, str]]:
    """The dashboard's files from package data, by path relative to its folder."""
    found: dict[str, tuple[bytes, str]] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for item in folder.iterdir():
            if item.is_dir():
                walk(item, f"{prefix}{item.name}/")
                continue
            suffix = "." + item.name.rpartition(".")[2]
            if suffix in _TYPES:
                found[prefix + item.name] = (item.read_bytes(), _TYPES[suffix])

    walk(resources.files("torpor.server") / "dashboard", "")
    return found


def _asset(name: str) -> Response:
    try:
        body, media_type = _assets()[name]
    except KeyError:
        raise ApiError(404, "NotFound", f"the dashboard has no file {name!r}") from None
    return Response(body, media_type=media_type, headers=_HEADERS)


def install_dashboard(app: FastAPI, token: str) -> None:
    """Add the dashboard's pages (``/dashboard/``), its login and logout to ``app``."""
    if "index.html" not in _assets():
        raise RuntimeError("the dashboard's files are missing from the torpor package")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard/", status_code=307)

    @app.get("/dashboard", include_in_schema=False)
    def dashboard_redirect() -> RedirectResponse:
        return RedirectResponse("/dashboard/", status_code=307)

    @app.get("/dashboard/", include_in_schema=False)
    def dashboard_index() -> Response:
        return _asset("index.html")

    @app.post("/dashboard/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        # JSON only: a form on another site can post url-encoded bodies, not JSON.
        media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "application/json":
            raise ApiError(415, "UnsupportedMediaType", 'send {"token": "..."} as JSON')
        try:
            body: Any = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(400, "InvalidJSON", 'send {"token": "..."} as JSON') from None
        given = body.get("token") if isinstance(body, dict) else None
        if not isinstance(given, str) or not given.strip():
            raise ApiError(422, "ValidationError", "token: give the API token")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(
                403,
                "Forbidden",
                "that is not the API token; it is in TORPOR_API_TOKEN or "
                "$TORPOR_HOME/api-token on the server's machine",
            )
        response = Response(status_code=204, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            SESSION_COOKIE,
            new_session(token),
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/dashboard/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        response = Response(status_code=204, headers={"Cache-Control": "no-store"})
        response.delete_cookie(
            SESSION_COOKIE,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.get("/dashboard/{name:path}", include_in_schema=False)
    def dashboard_file(name: str) -> Response:
        return _asset(name)
