"""Sandboxes for the snapshot road: a process tree in its own namespaces, checkpointed by CRIU.

See docs/sandbox.md for how to use them, what they guarantee and what they cost. Besides
`Sandbox`, this package holds what the rest of torpor needs to know about processes and
hosts: the one reader of ``/proc/PID/stat`` (`process_state`, `process_start_time`,
`alive`), `kill_tree`, `tree_processes`, and the host checks of `torpor doctor`.
"""

from __future__ import annotations

from .._errors import CriuError, CriuNotFoundError, SandboxError
from ._cgroup import available_controllers
from ._cleanup import Orphan, find_orphans, remove_orphans
from ._core import SandboxState, read_run_file
from ._criu import MIN_CRIU_VERSION, Criu, find_criu, fstype
from ._fingerprint import CheckpointBaseRootError, base_root_record, write_base_root
from ._host import has_sys_admin
from ._inspect import CheckpointBlockedError, tree_processes
from ._lazy import PageSource
from ._proc import alive, kill_tree, process_start_time, process_state
from ._records import PAGES_ELSEWHERE, Checkpoint, read_sandbox_meta
from ._sandbox import Sandbox

__all__ = [
    "MIN_CRIU_VERSION",
    "PAGES_ELSEWHERE",
    "Checkpoint",
    "CheckpointBaseRootError",
    "CheckpointBlockedError",
    "Criu",
    "CriuError",
    "CriuNotFoundError",
    "Orphan",
    "PageSource",
    "Sandbox",
    "SandboxError",
    "SandboxState",
    "alive",
    "available_controllers",
    "base_root_record",
    "find_criu",
    "find_orphans",
    "fstype",
    "has_sys_admin",
    "kill_tree",
    "process_start_time",
    "process_state",
    "read_run_file",
    "read_sandbox_meta",
    "remove_orphans",
    "tree_processes",
    "write_base_root",
]
