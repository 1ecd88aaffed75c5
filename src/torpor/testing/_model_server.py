"""A scripted model server on loopback that speaks the OpenAI and Anthropic wire formats.

Tests and the offline demo point the official SDKs at it (``base_url``) and it answers from a
script, so everything from the SDK's HTTP request to the agent's log is real except the model.

The script is either a list of replies, consumed one per request across both endpoints, or
a function of the request. For crash tests prefer the function, and make it a pure function
of the conversation: an agent restarted after a crash may send a turn again that the server
already answered, and a pure script gives it the same answer while ``server.calls`` shows
that the turn was sent twice. For example::

    def script(request: ScriptedRequest) -> ModelReply:
        done = len(request.tool_results)  # how far the conversation has got
        if done < 3:
            return reply_tool_calls(
                [("write_file", {"path": f"part{done}.txt", "content": "..."})],
                ids=[f"call-{done}"],  # fixed ids, so a re-sent turn gets the same reply
            )
        return reply_text("wrote three parts")

A list script can survive a restart of the server's own process with ``state_file=``,
where the index of the next reply is kept.
"""

from __future__ import annotations

import json
import math
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from ..agent import (
    AssistantText,
    Item,
    ItemFormatError,
    ModelReply,
    ReplyItem,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
    anthropic_response,
    items_from_anthropic_request,
    items_from_openai_request,
    openai_response,
)

__all__ = [
    "Script",
    "ScriptedModelServer",
    "ScriptedRequest",
    "reply_text",
    "reply_tool_calls",
]

Api = Literal["openai", "anthropic"]


@dataclass(frozen=True)
class ScriptedRequest:
    """One request the server received, converted to neutral items.

    Attributes:
        api: ``"openai"`` or ``"anthropic"``.
        model: the model the client asked for.
        system: the system prompt, or None.
        items: the conversation, as provider-neutral items.
        tools: the tools offered to the model.
        body: the raw JSON request body.
    """

    api: Api
    model: str
    system: str | None
    items: list[Item]
    tools: list[ToolSpec]
    body: dict[str, Any]

    @property
    def tool_results(self) -> list[ToolResult]:
        """The tool results in the conversation, in order."""
        return [item for item in self.items if isinstance(item, ToolResult)]


Script = Sequence[ModelReply | str] | Callable[[ScriptedRequest], ModelReply | str]
"""Replies in order (a str is a text reply), or a function from request to reply."""


def reply_text(text: str, *, model: str = "", usage: Usage | None = None) -> ModelReply:
    """A reply that answers with ``text`` and ends the turn.

    An empty ``model`` echoes the model the client asked for; without ``usage`` the server
    estimates the tokens.
    """
    return ModelReply([AssistantText(text)], usage or Usage(), model, "end_turn")


def reply_tool_calls(
    calls: Sequence[tuple[str, dict[str, Any]]],
    *,
    text: str | None = None,
    ids: Sequence[str] | None = None,
    model: str = "",
    usage: Usage | None = None,
) -> ModelReply:
    """A reply that calls tools, ``(name, arguments)`` each, optionally after some text.

    Without ``ids`` each call gets a fresh random id; pass ``ids`` where the same request
    must get an identical reply (crash tests).
    """
    if ids is not None and len(ids) != len(calls):
        raise ValueError(f"reply_tool_calls: {len(calls)} calls but {len(ids)} ids")
    call_ids = list(ids) if ids is not None else [f"call_{uuid.uuid4().hex[:24]}" for _ in calls]
    items: list[ReplyItem] = [AssistantText(text)] if text else []
    for call_id, (name, arguments) in zip(call_ids, calls, strict=True):
        items.append(ToolCall(call_id, name, dict(arguments)))
    return ModelReply(items, usage or Usage(), model, "tool_use")


class _ScriptError(Exception):
    """A request the server answers with an error instead of a reply."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


class ScriptedModelServer:
    """An HTTP server on 127.0.0.1 that answers model calls from a script.

    Serves ``POST /v1/chat/completions`` (OpenAI) and ``POST /v1/messages`` (Anthropic),
    without streaming. Like the real APIs it requires an ``Authorization`` or ``x-api-key``
    header (any value). An exhausted script, a failing script function or a malformed
    request gets an error in the API's own error format, which the SDKs raise as their
    ``APIStatusError`` subclasses.

    Args:
        script: the replies; see `Script`.
        state_file: for a list script, a file keeping the index of the next reply, so a
            server started again (in a new process) continues where the last one stopped.

    Attributes:
        calls: every well-formed request received, in order, including those the script
            had no reply for.
        errors: the messages of the error responses sent, in order.
    """

    def __init__(self, script: Script, *, state_file: str | os.PathLike[str] | None = None) -> None:
        self._script = script
        self._state_file = Path(state_file) if state_file is not None else None
        self._index = self._read_index()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.calls: list[ScriptedRequest] = []
        self.errors: list[str] = []

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> ScriptedModelServer:
        """Start serving on a free port; returns the server."""
        if self._httpd is not None:
            return self
        handler = type("_Handler", (_Handler,), {"model_server": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"scripted-model-server:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        assert self._thread is not None
        self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> ScriptedModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- addresses ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port it listens on."""
        if self._httpd is None:
            raise RuntimeError("the scripted model server is not running; call start()")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The ``base_url`` for ``openai.OpenAI``."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The ``base_url`` for ``anthropic.Anthropic``."""
        return self.url

    @property
    def call_count(self) -> int:
        """How many well-formed requests it received."""
        return len(self.calls)

    # --- answering ------------------------------------------------------------------------

    def _answer(self, api: Api, body: dict[str, Any]) -> dict[str, Any]:
        """The response body for a request body, or `_ScriptError`."""
        if body.get("stream"):
            raise _ScriptError(
                400, "invalid_request_error", "the scripted model server does not stream"
            )
        if api == "anthropic" and not isinstance(body.get("max_tokens"), int):
            raise _ScriptError(400, "invalid_request_error", "max_tokens: Field required")
        parse = items_from_openai_request if api == "openai" else items_from_anthropic_request
        try:
            model, system, items, tools = parse(body)
        except ItemFormatError as e:
            raise _ScriptError(400, "invalid_request_error", e.message) from None
        request = ScriptedRequest(api, model, system, items, tools, body)
        with self._lock:
            # One lock around the script: the order of replies is the order of requests.
            self.calls.append(request)
            reply = self._next_reply(request)
        if isinstance(reply, str):
            reply = reply_text(reply)
        reply = _fill_in(reply, request)
        reply_id = uuid.uuid4().hex[:24]
        if api == "openai":
            return openai_response(reply, id=f"chatcmpl-{reply_id}")
        return anthropic_response(reply, id=f"msg_{reply_id}")

    def _next_reply(self, request: ScriptedRequest) -> ModelReply | str:
        if callable(self._script):
            try:
                return self._script(request)
            except Exception as e:
                raise _ScriptError(
                    500, "server_error", f"the script raised {type(e).__name__}: {e}"
                ) from None
        index = self._index
        if index >= len(self._script):
            raise _ScriptError(
                500,
                "server_error",
                f"the script is exhausted: it has {len(self._script)} replies and this is "
                f"request {len(self.calls)} ({request.api}, model {request.model!r}); "
                "add replies to the script",
            )
        self._write_index(index + 1)
        return self._script[index]

    def _read_index(self) -> int:
        if self._state_file is None:
            return 0
        try:
            return int(self._state_file.read_text())
        except FileNotFoundError:
            return 0

    def _write_index(self, index: int) -> None:
        self._index = index
        if self._state_file is not None:
            # Replace, not overwrite: a process killed mid-write must not leave half a number.
            tmp = self._state_file.with_name(self._state_file.name + ".tmp")
            tmp.write_text(str(index))
            os.replace(tmp, self._state_file)


def _fill_in(reply: ModelReply, request: ScriptedRequest) -> ModelReply:
    """Echo the requested model and estimate tokens where the script left them out."""
    usage = reply.usage
    if usage == Usage():
        # About four characters a token; enough for cost reports in tests and demos.
        request_chars = len(json.dumps(request.body.get("messages", [])))
        reply_chars = len(reply.text) + sum(
            len(call.name) + len(call.arguments_string()) for call in reply.tool_calls
        )
        usage = Usage(math.ceil(request_chars / 4), math.ceil(reply_chars / 4))
    return ModelReply(reply.items, usage, reply.model or request.model, reply.stop_reason)


class _Handler(BaseHTTPRequestHandler):
    model_server: ScriptedModelServer  # set on the per-server subclass
    server_version = "torpor-scripted-model/1"

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        api: Api = "anthropic" if path == "/v1/messages" else "openai"
        try:
            if path not in ("/v1/chat/completions", "/v1/messages"):
                raise _ScriptError(404, "not_found_error", f"no such endpoint: POST {path}")
            if not (self.headers.get("authorization") or self.headers.get("x-api-key")):
                raise _ScriptError(
                    401,
                    "authentication_error",
                    "missing API key: send an Authorization or x-api-key header (any value)",
                )
            length = int(self.headers.get("content-length") or 0)
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError as e:
                raise _ScriptError(400, "invalid_request_error", f"body is not JSON: {e}") from e
            if not isinstance(body, dict):
                raise _ScriptError(400, "invalid_request_error", "body is not a JSON object")
            self._send(200, self.model_server._answer(api, body))
        except _ScriptError as e:
            self.model_server.errors.append(e.message)
            self._send(e.status, _error_body(api, e))

    def do_GET(self) -> None:
        error = _ScriptError(404, "not_found_error", f"no such endpoint: GET {self.path}")
        self._send(404, _error_body("openai", error))

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read server.calls and server.errors, not stderr noise


def _error_body(api: Api, error: _ScriptError) -> dict[str, Any]:
    message = f"scripted model server: {error.message}"
    if api == "anthropic":
        kind = "api_error" if error.kind == "server_error" else error.kind
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": error.kind, "param": None, "code": None}}
