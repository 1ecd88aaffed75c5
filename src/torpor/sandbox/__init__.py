"""Sandboxes for the snapshot road: a process tree in its own namespaces, checkpointed by CRIU.

See docs/sandbox.md for how to use them, what they guarantee and what they cost.
"""

from __future__ import annotations

from .._errors import CriuError, CriuNotFoundError, SandboxError
from ._cleanup import Orphan, find_orphans, remove_orphans
from ._criu import MIN_CRIU_VERSION, Criu, find_criu
from ._inspect import CheckpointBlockedError
from ._records import Checkpoint
from ._sandbox import Sandbox, SandboxState

__all__ = [
    "MIN_CRIU_VERSION",
    "Checkpoint",
    "CheckpointBlockedError",
    "Criu",
    "CriuError",
    "CriuNotFoundError",
    "Orphan",
    "Sandbox",
    "SandboxError",
    "SandboxState",
    "find_criu",
    "find_orphans",
    "remove_orphans",
]
