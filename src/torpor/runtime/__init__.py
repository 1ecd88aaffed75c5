"""The worker runtime: executing runs in this process or in `torpor worker` processes."""

from ._api import cancel, send, start
from ._executor import Executor
from ._handle import Run
from ._history import fork, resume
from ._process import configure
from ._worker import Worker
from .snapshot_road import CHECKPOINT_EVENT, checkpoint_now

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
