"""The base root a checkpoint needs: the host files its processes had mapped.

A restored process finds its code where it left it: the Python interpreter, shared
libraries and extension modules it had mapped are not in the snapshot (they belong to the
base root, or to paths the sandbox shares with the host) and must be the same files on the
worker that restores it. A deploy that upgraded a package, or a worker built from another
image, would bring the process back over different code — at best CRIU refuses with an
obscure message, at worst the process runs on and crashes later.

So a checkpoint records, for each such file, its size and modification time, and a restore
compares them with the files of its own base root first, naming the first that differs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._errors import BaseRootMismatchError, TorporError

__all__ = [
    "BASE_ROOT_FILE",
    "CheckpointBaseRootError",
    "base_root_record",
    "check_base_root",
    "write_base_root",
]

BASE_ROOT_FILE = "base-root.json"

# Never the host's files, whatever the sandbox maps there.
_OWN = ("/dev/", "/proc/", "/run/", "/sys/")


class CheckpointBaseRootError(BaseRootMismatchError):
    """A `BaseRootMismatchError` found by restoring a checkpoint, which it names by its
    directory; ``was`` and ``now`` describe ``path`` there and here, so that a caller that
    knows the checkpoint as a stored snapshot can say so (`for_snapshot`)."""

    def __init__(self, checkpoint: str, path: str, was: str, now: str) -> None:
        super().__init__(checkpoint, path, was, now)
        self.was = was
        self.now = now

    def for_snapshot(self, snapshot: str) -> BaseRootMismatchError:
        """The same mismatch, naming the snapshot the checkpoint was loaded from."""
        return BaseRootMismatchError(snapshot, self.path, self.was, self.now)


def _describe(stat: dict[str, Any]) -> str:
    return f"{stat['size']} bytes, modified at {stat['mtime_ns'] / 1e9:.3f}"


def _mapped_files(pids: Iterable[int]) -> set[str]:
    found: set[str] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].startswith("/"):
                        path = parts[5].rstrip("\n")
                        if not path.endswith(" (deleted)") and not path.startswith(_OWN):
                            found.add(path)
        except OSError:
            continue  # the process ended meanwhile
    return found


def _stat(path: Path) -> dict[str, Any] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _same_file(host: Path, inside: Path) -> bool:
    """Whether the sandbox sees the host's file there (through its overlay, which keeps a
    lower file's inode number, or a shared path), not one of its own."""
    try:
        a, b = host.stat(), inside.stat()
    except OSError:
        return False
    return (a.st_ino, a.st_size, a.st_mtime_ns) == (b.st_ino, b.st_size, b.st_mtime_ns)


def base_root_record(pids: Iterable[int], init_pid: int, base_root: str) -> dict[str, Any]:
    """The host files the processes ``pids`` have mapped, as seen by their sandbox (whose
    init is ``init_pid``) and found the same in ``base_root``; files the sandbox changed
    or created are its own and left out. Taken before a dump, written with
    `write_base_root` into the checkpoint after it."""
    inside = Path(f"/proc/{init_pid}/root")
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(_mapped_files(pids)):
        host = Path(base_root) / path.lstrip("/")
        if _same_file(host, inside / path.lstrip("/")):
            stat = _stat(host)
            if stat is not None:
                files[path] = stat
    return {"version": 1, "base_root": base_root, "files": files}


def write_base_root(directory: Path, record: dict[str, Any]) -> None:
    (directory / BASE_ROOT_FILE).write_text(json.dumps(record))


def check_base_root(directory: Path, base_root: str, snapshot: str) -> None:
    """Raise `CheckpointBaseRootError` if a file recorded by `base_root_record` in
    ``directory`` differs in ``base_root`` here. A checkpoint without the record (made by
    an older version) is not checked."""
    try:
        recorded = json.loads((directory / BASE_ROOT_FILE).read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        raise TorporError(
            f"snapshot {snapshot}: its {BASE_ROOT_FILE} is unreadable ({exc}); the snapshot "
            "is damaged: restore an older one"
        ) from None
    for path, was in recorded.get("files", {}).items():
        now = _stat(Path(base_root) / path.lstrip("/"))
        if now != was:
            here = "missing" if now is None else _describe(now)
            raise CheckpointBaseRootError(snapshot, path, _describe(was), here)
