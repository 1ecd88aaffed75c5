"""Neutral items to and from Anthropic Messages bodies; see ``_wire`` for the losses."""

from __future__ import annotations

import json
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
    "anthropic_reply",
    "anthropic_request",
    "anthropic_response",
    "items_from_anthropic_request",
]

_JSON = dict[str, Any]

_STOP_REASONS = frozenset(
    {
        "end_turn",
        "max_tokens",
        "stop_sequence",
        "tool_use",
        "pause_turn",
        "refusal",
        "model_context_window_exceeded",
    }
)


def anthropic_request(
    model: str,
    system: str | None,
    items: Sequence[Item | Mapping[str, Any]],
    tools: Sequence[ToolSpec],
    max_tokens: int,
) -> _JSON:
    """The body of ``POST /v1/messages`` for a conversation.

    Consecutive items of one role share a message, as the API requires roles to alternate;
    tool results travel in user messages.
    """
    messages: list[_JSON] = []
    for item in map(as_item, items):
        role = "assistant" if isinstance(item, AssistantText | ToolCall) else "user"
        if not messages or messages[-1]["role"] != role:
            messages.append({"role": role, "content": []})
        messages[-1]["content"].append(_anthropic_block(item))
    body: _JSON = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if system is not None:
        body["system"] = system
    if tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in tools
        ]
    return body


def _anthropic_block(item: Item) -> _JSON:
    if isinstance(item, UserText | AssistantText):
        return {"type": "text", "text": item.text}
    if isinstance(item, ToolCall):
        # Malformed arguments cannot travel as `input`; see the module docstring.
        arguments = item.arguments if item.arguments is not None else {}
        return {"type": "tool_use", "id": item.id, "name": item.name, "input": arguments}
    return {
        "type": "tool_result",
        "tool_use_id": item.id,
        "content": item.content,
        "is_error": item.is_error,
    }


def items_from_anthropic_request(
    body: Any,
) -> tuple[str, str | None, list[Item], list[ToolSpec]]:
    """The model, system prompt, items and tools of a Messages request body."""
    body = _obj(body, "request")
    model = _str(body, "model", "request")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        system = "\n".join(_anthropic_texts(system, "request.system"))
    items: list[Item] = []
    for i, message in enumerate(_list(body, "messages", "request")):
        where = f"request.messages[{i}]"
        message = _obj(message, where)
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise ItemFormatError(f"{where}.role", f"expected user or assistant, got {role!r}")
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list):
            raise ItemFormatError(f"{where}.content", "expected a string or a list of blocks")
        for j, block in enumerate(blocks):
            item = _anthropic_request_item(role, block, f"{where}.content[{j}]")
            if item is not None:
                items.append(item)
    tools = []
    for i, tool in enumerate(_optional_list(body, "tools", "request")):
        tool = _obj(tool, f"request.tools[{i}]")
        tools.append(
            ToolSpec(
                name=_str(tool, "name", f"request.tools[{i}]"),
                description=tool.get("description") or "",
                parameters=_obj(tool.get("input_schema"), f"request.tools[{i}].input_schema"),
            )
        )
    return model, system, items, tools


def _anthropic_request_item(role: str, block: Any, where: str) -> Item | None:
    block = _obj(block, where)
    kind = block.get("type")
    if kind == "text":
        text = _str(block, "text", where)
        if role == "user":
            return UserText(text)
        return AssistantText(text) if text else None
    if kind == "tool_use" and role == "assistant":
        return _anthropic_tool_call(block, where)
    if kind == "tool_result" and role == "user":
        content = block.get("content", "")
        if not isinstance(content, str):
            content = "".join(_anthropic_texts(content, f"{where}.content"))
        is_error = block.get("is_error") or False
        return ToolResult(_str(block, "tool_use_id", where), content, bool(is_error))
    raise ItemFormatError(f"{where}.type", f"unsupported {role} content block {kind!r}")


def _anthropic_texts(blocks: Any, where: str) -> list[str]:
    if not isinstance(blocks, list):
        raise ItemFormatError(where, "expected a string or a list of text blocks")
    texts = []
    for i, block in enumerate(blocks):
        block = _obj(block, f"{where}[{i}]")
        if block.get("type") != "text":
            raise ItemFormatError(f"{where}[{i}].type", "only text blocks are supported here")
        texts.append(_str(block, "text", f"{where}[{i}]"))
    return texts


def _anthropic_tool_call(block: _JSON, where: str) -> ToolCall:
    arguments = block.get("input", {})
    call_id, name = _str(block, "id", where), _str(block, "name", where)
    if isinstance(arguments, dict):
        return ToolCall(call_id, name, arguments)
    return ToolCall(call_id, name, None, json.dumps(arguments))


def anthropic_reply(response: Any) -> ModelReply:
    """The reply in a Messages response body."""
    response = _obj(response, "response")
    items: list[ReplyItem] = []
    for i, block in enumerate(_list(response, "content", "response")):
        where = f"response.content[{i}]"
        block = _obj(block, where)
        kind = block.get("type")
        if kind == "text":
            text = _str(block, "text", where)
            if text:
                items.append(AssistantText(text))
        elif kind == "tool_use":
            items.append(_anthropic_tool_call(block, where))
        # Other blocks (thinking, server tools) have no neutral form; skipping them is the
        # documented loss.
    usage = response.get("usage") or {}
    return ModelReply(
        items=items,
        usage=Usage(_count(usage, "input_tokens"), _count(usage, "output_tokens")),
        model=str(response.get("model") or ""),
        stop_reason=str(response.get("stop_reason") or "end_turn"),
    )


def anthropic_response(reply: ModelReply, *, id: str) -> _JSON:
    """A complete ``message`` object, as Anthropic's server would answer with ``reply``."""
    content = [_anthropic_block(item) for item in reply.items]
    return {
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": content,
        "stop_reason": _anthropic_stop_reason(reply.stop_reason),
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.usage.input_tokens,
            "output_tokens": reply.usage.output_tokens,
        },
    }


def _anthropic_stop_reason(stop_reason: str) -> str:
    # The SDK validates stop_reason against its list; OpenAI's content filter is a refusal.
    if stop_reason == "content_filter":
        return "refusal"
    return stop_reason if stop_reason in _STOP_REASONS else "end_turn"
