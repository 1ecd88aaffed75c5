"""This process's store and embedded executor: chosen with `configure`, else made from the
environment on first use."""

from __future__ import annotations

import threading

from .._config import Settings
from ..store import Store, open_store
from ._executor import Executor

__all__ = ["configure", "running_executor", "the_executor", "the_store"]

_lock = threading.Lock()
_store: Store | None = None
_executor: Executor | None = None


def configure(database_url: str | None = None, *, store: Store | None = None) -> Store:
    """Choose the store this process uses (default: from the environment, on first use)."""
    global _store, _executor
    with _lock:
        if _executor is not None:
            _executor.close()
            _executor = None
        _store = store or open_store(database_url)
        return _store


def the_store() -> Store:
    global _store
    with _lock:
        if _store is None:
            _store = open_store()
        return _store


def the_executor() -> Executor:
    """The embedded executor, started on first use."""
    global _executor
    store = the_store()
    with _lock:
        if _executor is None:
            _executor = Executor(store, lease_seconds=Settings.from_env().lease_seconds)
        return _executor


def running_executor() -> Executor | None:
    """The embedded executor if this process started one."""
    return _executor
