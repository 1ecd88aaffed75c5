"""Neutral items to and from the OpenAI Chat Completions and Anthropic Messages wire formats.

Pure functions over JSON bodies, no network. Each format has four: the request a client
sends (``*_request``) and its inverse for a server (``items_from_*_request``), the response a
server sends (``*_response``) and its inverse for a client (``*_reply``).

Where a format cannot say something the neutral items can, the loss is chosen and named:

- OpenAI puts one assistant turn's text before its tool calls, so text the model wrote
  after a tool call comes back first; several texts travel as a list of text parts.
- OpenAI tool messages have no error flag: an error result is sent as ``"Error: "`` +
  content, and a tool message starting with that prefix reads back as an error.
- Anthropic tool input must be an object: a call with malformed (raw) arguments is sent
  with ``input: {}``; the tool result the agent answers it with says what went wrong.
- Empty assistant text is dropped when reading either format, since servers send ``""``
  alongside tool calls.
- Content the neutral items cannot hold (images, thinking blocks) is refused in requests
  and skipped in replies.
"""

from ._wire_anthropic import (
    anthropic_reply,
    anthropic_request,
    anthropic_response,
    items_from_anthropic_request,
)
from ._wire_openai import (
    TOOL_ERROR_PREFIX,
    items_from_openai_request,
    openai_reply,
    openai_request,
    openai_response,
)

__all__ = [
    "TOOL_ERROR_PREFIX",
    "anthropic_reply",
    "anthropic_request",
    "anthropic_response",
    "items_from_anthropic_request",
    "items_from_openai_request",
    "openai_reply",
    "openai_request",
    "openai_response",
]
