"""The agent: a model-and-tools loop whose conversation is provider-neutral items.

Items (`UserText`, `AssistantText`, `ToolCall`, `ToolResult`) are what the context log
stores; the wire functions turn them into OpenAI Chat Completions or Anthropic Messages
bodies and back.
"""

from __future__ import annotations

from ._agent import Agent, AgentMaxTurnsError, run_agent
from ._items import (
    AssistantText,
    Item,
    ItemFormatError,
    ModelReply,
    ReplyItem,
    StopReason,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
    UserText,
    as_item,
    item_from_json,
    items_from_json,
    items_to_json,
    parse_tool_arguments,
)
from ._tools import Tool, tool
from ._wire import (
    TOOL_ERROR_PREFIX,
    anthropic_reply,
    anthropic_request,
    anthropic_response,
    items_from_anthropic_request,
    items_from_openai_request,
    openai_reply,
    openai_request,
    openai_response,
)

__all__ = [
    "TOOL_ERROR_PREFIX",
    "Agent",
    "AgentMaxTurnsError",
    "AssistantText",
    "Item",
    "ItemFormatError",
    "ModelReply",
    "ReplyItem",
    "StopReason",
    "Tool",
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "Usage",
    "UserText",
    "anthropic_reply",
    "anthropic_request",
    "anthropic_response",
    "as_item",
    "item_from_json",
    "items_from_anthropic_request",
    "items_from_json",
    "items_from_openai_request",
    "items_to_json",
    "openai_reply",
    "openai_request",
    "openai_response",
    "parse_tool_arguments",
    "run_agent",
    "tool",
]
