"""`ContextLog`: a run's log as DESIGN.md names its operations, over any `Store`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .._model import LogEntry, iso
from ..store import Store

__all__ = ["ContextLog", "describe_entry"]


class ContextLog:
    """The append-only context logs of a store's runs.

    Example:
        >>> log = ContextLog(store)
        >>> seq = log.append(run_id, "user", {"text": "hi"})
        >>> log.append(run_id, "assistant", {"text": "hello"}, expected_seq=seq + 1)
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def append(self, run_id: str, kind: str, payload: Any, expected_seq: int | None = None) -> int:
        """Append atomically; with ``expected_seq``, fail with `LogConflictError` rather
        than write anywhere but that seq."""
        return self.store.append(run_id, kind, payload, expected_seq=expected_seq)

    def read(self, run_id: str, after: int = 0, limit: int | None = None) -> list[LogEntry]:
        """Entries after seq ``after``, oldest first."""
        return self.store.read(run_id, after=after, limit=limit)

    def follow(
        self, run_id: str, after: int = 0, *, stop_when_final: bool = False
    ) -> Iterator[LogEntry]:
        """Entries as they land, blocking between them."""
        return self.store.follow(run_id, after=after, stop_when_final=stop_when_final)


def describe_entry(entry: LogEntry, width: int = 160) -> str:
    """One human-readable line for an entry, as `torpor log` prints it."""
    text = json.dumps(entry.payload, ensure_ascii=False, separators=(", ", ": "))
    if len(text) > width:
        text = text[: width - 1] + "…"
    return f"{entry.seq:>6}  {iso(entry.created_at)}  {entry.kind:<16} {text}"
