"""Provider-neutral conversation items: what the context log stores for an agent.

Each item is a small frozen dataclass with ``to_json`` (the plain dict written to the log)
and ``from_json`` (validated; malformed input raises `ItemFormatError` naming the field).
The wire formats of OpenAI and Anthropic convert to and from these in ``_wire``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from .._errors import TorporError

__all__ = [
    "AssistantText",
    "Item",
    "ItemFormatError",
    "ModelReply",
    "ReplyItem",
    "StopReason",
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "Usage",
    "UserText",
    "as_item",
    "item_from_json",
    "items_from_json",
    "items_to_json",
    "parse_tool_arguments",
]

StopReason: TypeAlias = Literal["end_turn", "tool_use", "max_tokens"] | str
"""Why the model stopped; the three named values are the ones the agent acts on."""


class ItemFormatError(TorporError, ValueError):
    """A conversation item, model reply or wire body is malformed.

    Attributes:
        where: the path of the offending value, e.g. ``"items[3].arguments"``.
        problem: what is wrong with it.
    """

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


@dataclass(frozen=True)
class UserText:
    """A message from the user (or the program driving the agent)."""

    text: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "user", "text": self.text}

    @classmethod
    def from_json(cls, data: Any, where: str = "item") -> UserText:
        obj = _object(data, where, "user")
        return cls(read_str(obj, "text", where))


@dataclass(frozen=True)
class AssistantText:
    """Text the model wrote."""

    text: str

    def to_json(self) -> dict[str, Any]:
        return {"type": "assistant", "text": self.text}

    @classmethod
    def from_json(cls, data: Any, where: str = "item") -> AssistantText:
        obj = _object(data, where, "assistant")
        return cls(read_str(obj, "text", where))


@dataclass(frozen=True)
class ToolCall:
    """The model asks for a tool to be run.

    ``arguments`` is the decoded JSON object. When the model sent arguments that are not a
    JSON object, ``arguments`` is None and ``raw_arguments`` keeps what it sent, so the agent
    can answer with an error result instead of failing the run.
    """

    id: str
    name: str
    arguments: dict[str, Any] | None
    raw_arguments: str | None = None

    def __post_init__(self) -> None:
        if (self.arguments is None) == (self.raw_arguments is None):
            raise ItemFormatError(
                f"tool_call {self.id!r}",
                "exactly one of arguments (a dict) and raw_arguments (a str) must be set",
            )

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": "tool_call",
            "id": self.id,
            "name": self.name,
            "arguments": self.arguments,
        }
        if self.raw_arguments is not None:
            data["raw_arguments"] = self.raw_arguments
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "item") -> ToolCall:
        obj = _object(data, where, "tool_call")
        arguments = obj.get("arguments")
        if arguments is None:
            raw = obj.get("raw_arguments")
            if not isinstance(raw, str):
                raise ItemFormatError(
                    f"{where}.raw_arguments", "a str is required when arguments is null"
                )
            return cls(read_str(obj, "id", where), read_str(obj, "name", where), None, raw)
        if not isinstance(arguments, dict):
            raise ItemFormatError(f"{where}.arguments", "expected an object or null")
        return cls(read_str(obj, "id", where), read_str(obj, "name", where), dict(arguments))

    @classmethod
    def from_arguments_string(cls, id: str, name: str, arguments: str) -> ToolCall:
        """A call from a wire format that sends arguments as a JSON string (OpenAI)."""
        parsed = parse_tool_arguments(arguments)
        if parsed is None:
            return cls(id, name, None, arguments)
        return cls(id, name, parsed)

    def arguments_string(self) -> str:
        """The arguments as a JSON string; the raw string for malformed arguments."""
        if self.arguments is None:
            assert self.raw_arguments is not None  # guaranteed by __post_init__
            return self.raw_arguments
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass(frozen=True)
class ToolResult:
    """The outcome of a tool call, answered by ``id``."""

    id: str
    content: str
    is_error: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "tool_result",
            "id": self.id,
            "content": self.content,
            "is_error": self.is_error,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "item") -> ToolResult:
        obj = _object(data, where, "tool_result")
        is_error = obj.get("is_error", False)
        if not isinstance(is_error, bool):
            raise ItemFormatError(f"{where}.is_error", "expected a bool")
        return cls(read_str(obj, "id", where), read_str(obj, "content", where), is_error)


Item: TypeAlias = UserText | AssistantText | ToolCall | ToolResult
"""Any conversation item."""

ReplyItem: TypeAlias = AssistantText | ToolCall
"""The items a model reply can hold."""

_ITEM_TYPES: dict[str, type[UserText] | type[AssistantText] | type[ToolCall] | type[ToolResult]]
_ITEM_TYPES = {
    "user": UserText,
    "assistant": AssistantText,
    "tool_call": ToolCall,
    "tool_result": ToolResult,
}


def item_from_json(data: Any, where: str = "item") -> Item:
    """The item a JSON dict describes, dispatching on its ``type``."""
    if not isinstance(data, dict):
        raise ItemFormatError(where, f"expected an object, got {type(data).__name__}")
    kind = data.get("type")
    cls = _ITEM_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ItemFormatError(
            f"{where}.type", f"unknown item type {kind!r}; expected one of {sorted(_ITEM_TYPES)}"
        )
    return cls.from_json(data, where)


def as_item(item: Item | Mapping[str, Any]) -> Item:
    """``item`` itself, or the item its JSON form (as stored in the log) describes."""
    if isinstance(item, UserText | AssistantText | ToolCall | ToolResult):
        return item
    return item_from_json(dict(item))


def items_from_json(data: Any, where: str = "items") -> list[Item]:
    """A list of items from a JSON list."""
    if not isinstance(data, list):
        raise ItemFormatError(where, f"expected a list, got {type(data).__name__}")
    return [item_from_json(d, f"{where}[{i}]") for i, d in enumerate(data)]


def items_to_json(items: Sequence[Item]) -> list[dict[str, Any]]:
    """The JSON form of a list of items."""
    return [item.to_json() for item in items]


@dataclass(frozen=True)
class Usage:
    """Tokens a model call consumed."""

    input_tokens: int = 0
    output_tokens: int = 0

    def to_json(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}

    @classmethod
    def from_json(cls, data: Any, where: str = "usage") -> Usage:
        if not isinstance(data, dict):
            raise ItemFormatError(where, "expected an object")
        return cls(_int(data, "input_tokens", where), _int(data, "output_tokens", where))


@dataclass(frozen=True)
class ModelReply:
    """One answer from the model: its text and tool calls in order, and what it cost.

    Attributes:
        items: assistant text and tool calls, in the order the model produced them.
        usage: input and output tokens.
        model: the model that answered, as the provider names it.
        stop_reason: ``"end_turn"``, ``"tool_use"``, ``"max_tokens"`` or another
            provider-specific reason.
    """

    items: list[ReplyItem]
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    stop_reason: StopReason = "end_turn"

    def __post_init__(self) -> None:
        for i, item in enumerate(self.items):
            if not isinstance(item, AssistantText | ToolCall):
                raise ItemFormatError(
                    f"reply.items[{i}]",
                    f"a reply holds assistant text and tool calls, not {type(item).__name__}",
                )

    @property
    def text(self) -> str:
        """All assistant text of the reply, joined."""
        return "".join(item.text for item in self.items if isinstance(item, AssistantText))

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The tool calls of the reply, in order."""
        return [item for item in self.items if isinstance(item, ToolCall)]

    def to_json(self) -> dict[str, Any]:
        return {
            "items": items_to_json(self.items),
            "usage": self.usage.to_json(),
            "model": self.model,
            "stop_reason": self.stop_reason,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "reply") -> ModelReply:
        if not isinstance(data, dict):
            raise ItemFormatError(where, "expected an object")
        items: list[ReplyItem] = []
        for i, item in enumerate(items_from_json(data.get("items"), f"{where}.items")):
            if not isinstance(item, AssistantText | ToolCall):
                raise ItemFormatError(f"{where}.items[{i}]", "expected assistant or tool_call")
            items.append(item)
        return cls(
            items=items,
            usage=Usage.from_json(data.get("usage"), f"{where}.usage"),
            model=read_str(data, "model", where),
            stop_reason=read_str(data, "stop_reason", where),
        )


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: its name, what it does, and a JSON schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    @classmethod
    def from_json(cls, data: Any, where: str = "tool") -> ToolSpec:
        if not isinstance(data, dict):
            raise ItemFormatError(where, "expected an object")
        parameters = data.get("parameters")
        if not isinstance(parameters, dict):
            raise ItemFormatError(f"{where}.parameters", "expected a JSON schema object")
        return cls(read_str(data, "name", where), read_str(data, "description", where), parameters)


def parse_tool_arguments(text: str) -> dict[str, Any] | None:
    """Decode a JSON-object arguments string; None if it is not one.

    A blank string counts as no arguments: some servers send ``""`` for a tool that takes
    none, and calling that an error would make such tools unusable.
    """
    if not text.strip():
        return {}
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; the log could not store them.
    raise ValueError(f"{name} is not JSON")


def _object(data: Any, where: str, kind: str) -> Mapping[str, Any]:
    obj = read_object(data, where)
    if obj.get("type", kind) != kind:
        raise ItemFormatError(f"{where}.type", f"expected {kind!r}, got {obj.get('type')!r}")
    return obj


def _int(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ItemFormatError(f"{where}.{key}", f"expected a count >= 0, got {value!r}")
    return value


# --- reading JSON bodies with errors that name the field (shared with the wire modules) ----


def read_object(value: Any, where: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else `ItemFormatError` at ``where``."""
    if not isinstance(value, dict):
        raise ItemFormatError(where, f"expected an object, got {_kind(value)}")
    return value


def read_list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    """The list at ``obj[key]``."""
    value = obj.get(key)
    if not isinstance(value, list):
        raise ItemFormatError(f"{where}.{key}", f"expected a list, got {_kind(value)}")
    return value


def read_optional_list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    """The list at ``obj[key]``; empty when absent or null."""
    return [] if obj.get(key) is None else read_list(obj, key, where)


def read_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    """The string at ``obj[key]``."""
    value = obj.get(key)
    if not isinstance(value, str):
        raise ItemFormatError(f"{where}.{key}", f"expected a string, got {_kind(value)}")
    return value


def read_count(obj: Any, key: str) -> int:
    """A token count at ``obj[key]``, 0 when missing."""
    # Some compatible servers omit usage or send null counts; zero is the honest reading.
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
