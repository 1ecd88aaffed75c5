"""The snapshot road: a run's workflow executes in a sandbox, behind the gateway, and
its state is checkpointed with CRIU (`_run`: supervision and the gateway's host side;
`_checkpoints`: checkpoints and suspends; `_restore`: bringing a snapshot back)."""

from typing import TYPE_CHECKING, Any

from ._checkpoints import CHECKPOINT_EVENT, checkpoint_now
from ._run import SnapshotRoadRun

if TYPE_CHECKING:
    from ._restore import Restored, restore, restore_latest

__all__ = [
    "CHECKPOINT_EVENT",
    "Restored",
    "SnapshotRoadRun",
    "checkpoint_now",
    "restore",
    "restore_latest",
]


def __getattr__(name: str) -> Any:
    # The snapshot store (zstd, blake3, AES) loads only where snapshots are restored: not in
    # every process that imports torpor, nor in the sandboxed runner, whose snapshots it
    # would fill.
    if name in ("Restored", "restore", "restore_latest"):
        from . import _restore

        return getattr(_restore, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
