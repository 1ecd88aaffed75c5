"""The worker runtime: executing runs in this process or in `torpor worker` processes."""

from ._api import Run, cancel, configure, fork, resume, send, start
from ._executor import Executor
from ._snapshot_road import CHECKPOINT_EVENT, checkpoint_now
from ._worker import Worker

__all__ = [
    "CHECKPOINT_EVENT",
    "Executor",
    "Run",
    "Worker",
    "cancel",
    "checkpoint_now",
    "configure",
    "fork",
    "resume",
    "send",
    "start",
]
