"""`Sandbox`: a process tree in its own pid and mount namespaces on an overlay root,
checkpointed by CRIU.

What it is and does once running lives in `_core.py`; how it begins and ends a life, in
`_launch.py` (a new tree), `_checkpoint.py` (a dump) and `_restore.py` (back from a dump).
"""

from __future__ import annotations

from ._checkpoint import Checkpointing
from ._launch import Launching
from ._restore import Restoring

__all__ = ["Sandbox"]


class Sandbox(Launching, Checkpointing, Restoring):
    """A running (or finished) sandbox; build one with `launch`, `restore` or `fork`.

    Use it as a context manager, or call `teardown`, so nothing stays mounted or running.
    """
