"""The context log: per run, append-only entries of everything the model saw and did."""

from __future__ import annotations

from ._log import ContextLog, describe_entry

__all__ = ["ContextLog", "describe_entry"]
