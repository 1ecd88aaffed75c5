"""Helpers for testing code built on torpor, and for torpor's own tests and benchmarks."""

from ._model_server import (
    Script,
    ScriptedModelServer,
    ScriptedRequest,
    reply_text,
    reply_tool_calls,
)
from ._postgres import TemporaryPostgres, find_postgres_bin
from ._process_tree import process_tree, tree_rss_mb
from ._replayer import Replayed, UnrecordedCallError, replay
from ._wait import wait_until
from ._workers import WorkerGroup, WorkerProcess

__all__ = [
    "Replayed",
    "Script",
    "ScriptedModelServer",
    "ScriptedRequest",
    "TemporaryPostgres",
    "UnrecordedCallError",
    "WorkerGroup",
    "WorkerProcess",
    "find_postgres_bin",
    "process_tree",
    "replay",
    "reply_text",
    "reply_tool_calls",
    "tree_rss_mb",
    "wait_until",
]
