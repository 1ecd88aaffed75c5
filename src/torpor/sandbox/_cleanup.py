"""Finding and removing what crashed orchestrators left behind: sandboxes whose owner is gone.

A sandbox belongs to the process that launched or restored it (recorded in sandbox.json). Once
that process is gone nobody can checkpoint or stop the sandbox any more. Its watcher
(`_watch.py`) kills its tree within a moment, but its overlays stay mounted and its cgroups
and directory stay in place; and a tree can still run if its owner died in the few
milliseconds between the tree's start and its watcher's, or if the watcher itself was killed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .._config import Settings
from . import _host, _proc
from ._cgroup import remove_cgroups
from ._records import read_sandbox_meta

__all__ = ["Orphan", "find_orphans", "remove_orphans"]

# A directory without sandbox.json may be one being created right now.
_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class Orphan:
    """A sandbox directory under ``$TORPOR_HOME/sandboxes`` that nobody owns any more."""

    sandbox_id: str
    directory: Path
    reason: str
    running_pid: int | None
    mounts: int


def find_orphans(settings: Settings | None = None) -> list[Orphan]:
    """Sandboxes whose owning process is gone (or that never recorded one)."""
    settings = settings or Settings.from_env()
    root = settings.home / "sandboxes"
    if not root.is_dir():
        return []
    found = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        meta = read_sandbox_meta(directory)
        if meta is None:
            if time.time() - directory.stat().st_mtime < _GRACE_SECONDS:
                continue
            reason = "it has no sandbox.json"
            pid = None
        elif _proc.alive(meta.get("owner"), meta.get("owner_start")):
            continue
        else:
            reason = f"its owner, process {meta.get('owner')}, is gone"
            alive = _proc.alive(meta.get("pid"), meta.get("pid_start"))
            pid = meta.get("pid") if alive else None
        found.append(
            Orphan(directory.name, directory, reason, pid, len(_host.mounts_under(directory)))
        )
    return found


def remove_orphans(orphans: list[Orphan]) -> None:
    """Kill each orphan's tree, unmount its overlays, drop its cgroups, delete its directory.

    Raises:
        SandboxError: a mount would not go away (the directory is then left in place).
    """
    for orphan in orphans:
        meta = read_sandbox_meta(orphan.directory) or {}
        if meta.get("pid") is not None:
            _proc.kill_tree(meta["pid"], meta.get("pid_start"))
        remove_cgroups([Path(g) for g in meta.get("cgroups", [])])
        _host.remove_directory(orphan.sandbox_id, orphan.directory)
