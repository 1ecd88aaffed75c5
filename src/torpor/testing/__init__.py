"""Helpers for testing code built on torpor, and for torpor's own tests and benchmarks."""

from ._model_server import (
    Script,
    ScriptedModelServer,
    ScriptedRequest,
    reply_text,
    reply_tool_calls,
)
from ._postgres import TemporaryPostgres, find_postgres_bin

__all__ = [
    "Script",
    "ScriptedModelServer",
    "ScriptedRequest",
    "TemporaryPostgres",
    "find_postgres_bin",
    "reply_text",
    "reply_tool_calls",
]
