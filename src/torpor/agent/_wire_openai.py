"""Neutral items to and from OpenAI Chat Completions bodies; see ``_wire`` for the losses."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._items import (
    AssistantText,
    Item,
    ItemFormatError,
    ModelReply,
    ReplyItem,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
    UserText,
    as_item,
)
from ._items import read_count as _count
from ._items import read_list as _list
from ._items import read_object as _obj
from ._items import read_optional_list as _optional_list
from ._items import read_str as _str

__all__ = [
    "TOOL_ERROR_PREFIX",
    "items_from_openai_request",
    "openai_reply",
    "openai_request",
    "openai_response",
]

TOOL_ERROR_PREFIX = "Error: "
"""How an error tool result is marked in OpenAI's format, which has no error flag."""

_FINISH_TO_STOP = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
}
_STOP_TO_FINISH = {
    "end_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "stop_sequence": "stop",
    "content_filter": "content_filter",
    "refusal": "content_filter",
}

_JSON = dict[str, Any]


def openai_request(
    model: str,
    system: str | None,
    items: Sequence[Item | Mapping[str, Any]],
    tools: Sequence[ToolSpec],
    max_tokens: int | None = None,
    *,
    max_tokens_field: str = "max_completion_tokens",
) -> _JSON:
    """The body of ``POST /v1/chat/completions`` for a conversation.

    Args:
        model: the model name.
        system: the system prompt, or None for none.
        items: the conversation so far, as items or their JSON dicts from the log.
        tools: the tools the model may call.
        max_tokens: the cap on output tokens, or None for the server's default.
        max_tokens_field: ``"max_completion_tokens"`` (OpenAI's current name, required by
            its reasoning models) or ``"max_tokens"`` (what llama.cpp and Ollama read).
    """
    messages: list[_JSON] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    turn: list[ReplyItem] = []
    for item in map(as_item, items):
        if isinstance(item, AssistantText | ToolCall):
            turn.append(item)
            continue
        if turn:
            messages.append(_openai_assistant_message(turn))
            turn = []
        if isinstance(item, UserText):
            messages.append({"role": "user", "content": item.text})
        else:
            content = TOOL_ERROR_PREFIX + item.content if item.is_error else item.content
            messages.append({"role": "tool", "tool_call_id": item.id, "content": content})
    if turn:
        messages.append(_openai_assistant_message(turn))
    body: _JSON = {"model": model, "messages": messages}
    if tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in tools
        ]
    if max_tokens is not None:
        body[max_tokens_field] = max_tokens
    return body


def _openai_assistant_message(turn: Sequence[ReplyItem]) -> _JSON:
    texts = [i.text for i in turn if isinstance(i, AssistantText)]
    calls = [i for i in turn if isinstance(i, ToolCall)]
    content: str | list[_JSON] | None
    if not texts:
        content = None
    elif len(texts) == 1:
        content = texts[0]
    else:
        content = [{"type": "text", "text": t} for t in texts]
    message: _JSON = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments_string()},
            }
            for c in calls
        ]
    return message


def items_from_openai_request(
    body: Any,
) -> tuple[str, str | None, list[Item], list[ToolSpec]]:
    """The model, system prompt, items and tools of a Chat Completions request body."""
    body = _obj(body, "request")
    model = _str(body, "model", "request")
    system_parts: list[str] = []
    items: list[Item] = []
    for i, message in enumerate(_list(body, "messages", "request")):
        where = f"request.messages[{i}]"
        message = _obj(message, where)
        role = message.get("role")
        if role in ("system", "developer"):
            system_parts.extend(_openai_texts(message.get("content"), f"{where}.content"))
        elif role == "user":
            texts = _openai_texts(message.get("content"), f"{where}.content")
            items.extend(UserText(t) for t in texts)
        elif role == "assistant":
            content = message.get("content")
            texts = [] if content is None else _openai_texts(content, f"{where}.content")
            items.extend(AssistantText(t) for t in texts if t)
            for j, call in enumerate(_optional_list(message, "tool_calls", where)):
                items.append(_openai_tool_call(call, f"{where}.tool_calls[{j}]"))
        elif role == "tool":
            content = "".join(_openai_texts(message.get("content"), f"{where}.content"))
            is_error = content.startswith(TOOL_ERROR_PREFIX)
            if is_error:
                content = content[len(TOOL_ERROR_PREFIX) :]
            items.append(ToolResult(_str(message, "tool_call_id", where), content, is_error))
        else:
            raise ItemFormatError(f"{where}.role", f"unsupported role {role!r}")
    tools = [
        _openai_tool_spec(t, f"request.tools[{i}]")
        for i, t in enumerate(_optional_list(body, "tools", "request"))
    ]
    system = "\n".join(system_parts) if system_parts else None
    return model, system, items, tools


def _openai_texts(content: Any, where: str) -> list[str]:
    """The texts of a message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise ItemFormatError(where, f"expected a string or a list of parts, got {content!r}")
    texts = []
    for i, part in enumerate(content):
        part = _obj(part, f"{where}[{i}]")
        if part.get("type") != "text":
            raise ItemFormatError(
                f"{where}[{i}].type", f"only text parts are supported, got {part.get('type')!r}"
            )
        texts.append(_str(part, "text", f"{where}[{i}]"))
    return texts


def _openai_tool_call(call: Any, where: str) -> ToolCall:
    call = _obj(call, where)
    function = _obj(call.get("function"), f"{where}.function")
    arguments = function.get("arguments", "")
    call_id = _str(call, "id", where)
    name = _str(function, "name", f"{where}.function")
    if isinstance(arguments, dict):  # lenient servers and clients send an object
        return ToolCall(call_id, name, arguments)
    if not isinstance(arguments, str):
        return ToolCall(call_id, name, None, json.dumps(arguments))
    return ToolCall.from_arguments_string(call_id, name, arguments)


def _openai_tool_spec(tool: Any, where: str) -> ToolSpec:
    tool = _obj(tool, where)
    function = _obj(tool.get("function"), f"{where}.function")
    return ToolSpec(
        name=_str(function, "name", f"{where}.function"),
        description=function.get("description") or "",
        parameters=_obj(
            function.get("parameters", {"type": "object", "properties": {}}),
            f"{where}.function.parameters",
        ),
    )


def openai_reply(response: Any) -> ModelReply:
    """The reply in a Chat Completions response body."""
    response = _obj(response, "response")
    choices = _list(response, "choices", "response")
    if not choices:
        raise ItemFormatError("response.choices", "the response has no choices")
    choice = _obj(choices[0], "response.choices[0]")
    message = _obj(choice.get("message"), "response.choices[0].message")
    items: list[ReplyItem] = []
    # A refusal is the model's answer in words; the agent shows it like any text.
    for key in ("content", "refusal"):
        text = message.get(key)
        if text:
            texts = _openai_texts(text, f"response.choices[0].message.{key}")
            items.extend(AssistantText(t) for t in texts if t)
    for i, call in enumerate(_optional_list(message, "tool_calls", "response.choices[0].message")):
        where = f"response.choices[0].message.tool_calls[{i}]"
        if _obj(call, where).get("type", "function") == "function":
            items.append(_openai_tool_call(call, where))
    usage = response.get("usage") or {}
    finish = choice.get("finish_reason") or "stop"
    return ModelReply(
        items=items,
        usage=Usage(_count(usage, "prompt_tokens"), _count(usage, "completion_tokens")),
        model=str(response.get("model") or ""),
        stop_reason=_FINISH_TO_STOP.get(finish, finish),
    )


def openai_response(reply: ModelReply, *, id: str, created: int | None = None) -> _JSON:
    """A complete ``chat.completion`` object, as OpenAI's server would answer with ``reply``."""
    texts = [i.text for i in reply.items if isinstance(i, AssistantText)]
    calls = reply.tool_calls
    message: _JSON = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
        "annotations": [],
        "tool_calls": [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments_string()},
            }
            for c in calls
        ]
        or None,
    }
    usage = reply.usage
    return {
        "id": id,
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": reply.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _STOP_TO_FINISH.get(reply.stop_reason, "stop"),
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        },
    }
