"""The scripted agent conversation that bench/agent_storage.py records with every system.

One turn is four messages: the user's message, the assistant's reply that calls a tool, the
tool's result, and the assistant's answer. Their text is a pure function of the turn number
(seeded word salad, so compression finds no repeats to feed on), at the sizes of a real
coding agent's turn: ~1 KB user message, ~0.5 KB assistant text plus ~0.3 KB of tool-call
arguments, ~1.8 KB tool result, ~1.2 KB answer. Imports nothing from torpor or the peers:
both virtualenvs load it.
"""

from __future__ import annotations

import random
from typing import Any

_WORDS = str.split(
    "agent file test plan read write diff patch commit branch error trace stack module "
    "function class value return config option server client request response cache "
    "index query table column row schema migrate deploy build check lint format type "
    "list dict string bytes number async thread process signal timeout retry backoff "
    "log entry seq run step workflow snapshot restore memory page chunk blob store"
)
SIZES = {"user": 1000, "assistant_call": 500, "arguments": 300, "tool": 1800, "answer": 1200}
TOOL = "search_code"


def _text(turn: int, part: str, size: int) -> str:
    rng = random.Random(f"{turn}:{part}")
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        if rng.random() < 0.15:
            word = f"{word}_{rng.randrange(10_000)}"
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def user_message(turn: int) -> str:
    return f"Turn {turn}. " + _text(turn, "user", SIZES["user"])


def assistant_call(turn: int) -> tuple[str, dict[str, Any], str]:
    """The assistant's text, the tool call's arguments and the call's id."""
    arguments = {"query": _text(turn, "arguments", SIZES["arguments"]), "limit": 20, "turn": turn}
    return _text(turn, "assistant_call", SIZES["assistant_call"]), arguments, f"call-{turn}"


def tool_result(turn: int) -> str:
    return _text(turn, "tool", SIZES["tool"])


def answer(turn: int) -> str:
    return _text(turn, "answer", SIZES["answer"])


def turn_bytes(turn: int) -> int:
    """The text of one turn, in bytes: what any store has to keep at the least."""
    text, arguments, call_id = assistant_call(turn)
    parts = [user_message(turn), text, str(arguments), call_id, tool_result(turn), answer(turn)]
    return sum(len(p.encode()) for p in parts)
