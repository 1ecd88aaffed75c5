"""The worker runtime: executing runs in this process or in `torpor worker` processes."""

from ._api import Run, cancel, configure, fork, resume, send, start
from ._executor import Executor
from ._worker import Worker

__all__ = ["Executor", "Run", "Worker", "cancel", "configure", "fork", "resume", "send", "start"]
