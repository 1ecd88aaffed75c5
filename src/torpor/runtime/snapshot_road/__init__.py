"""The snapshot road: a run's workflow executes in a sandbox, behind the gateway, and
its state is checkpointed with CRIU (`_run`: supervision and the gateway's host side;
`_checkpoints`: checkpoints and suspends; `_restore`: bringing a snapshot back)."""

from ._checkpoints import CHECKPOINT_EVENT, checkpoint_now
from ._restore import Restored, restore, restore_latest
from ._run import SnapshotRoadRun

__all__ = [
    "CHECKPOINT_EVENT",
    "Restored",
    "SnapshotRoadRun",
    "checkpoint_now",
    "restore",
    "restore_latest",
]
