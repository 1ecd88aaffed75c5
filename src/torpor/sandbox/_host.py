"""Host-side primitives the sandbox stands on: mounts, process identity, directory trees."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

from .._errors import SandboxError

__all__ = [
    "alive",
    "become_subreaper",
    "copy_tree",
    "kill_tree",
    "mount",
    "mounts_under",
    "remove_directory",
    "start_time",
    "tree_bytes",
    "unmount_all",
]

_MNT_DETACH = 2
_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def mount(sandbox_id: str, source: str, target: Path, fstype: str, data: str) -> None:
    """mount(2) with no flags; raises SandboxError naming the target."""
    if _libc.mount(source.encode(), str(target).encode(), fstype.encode(), 0, data.encode()):
        err = ctypes.get_errno()
        raise SandboxError(
            sandbox_id,
            f"cannot mount {fstype} on {target} ({data}): {os.strerror(err)}",
            "run as root on a kernel with overlayfs (`torpor doctor` checks both)",
        )


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below ``directory`` in this mount namespace, deepest first."""
    top = str(directory)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == top or point.startswith(top + "/"):
            found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_all(directory: Path) -> None:
    """Unmount everything at or below ``directory``; busy mounts are detached lazily."""
    for point in mounts_under(directory):
        if _libc.umount2(point.encode(), 0):
            _libc.umount2(point.encode(), _MNT_DETACH)


def remove_directory(sandbox_id: str, directory: Path) -> None:
    """Unmount, then delete ``directory``; refuses to delete through a mount that stayed."""
    unmount_all(directory)
    left = mounts_under(directory)
    if left:
        # Deleting through a mount point would delete the mounted files (a workspace).
        raise SandboxError(
            sandbox_id,
            f"{left[0]} is still mounted, so {directory} was not deleted",
            f"unmount it (umount -l {left[0]}) and run `torpor doctor --cleanup`",
        )
    shutil.rmtree(directory, ignore_errors=True)


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks: with the pid, it names one process for good."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # exited; only its exit status is left
        return None
    return int(fields[19])


def alive(pid: int | None, started: int | None) -> bool:
    return pid is not None and started is not None and start_time(pid) == started


def kill_tree(pid: int, started: int | None, timeout: float = 10.0) -> None:
    """SIGKILL a sandbox's init (its whole pid namespace dies with it) and wait until gone.

    A pid-namespace init ignores SIGTERM from outside, so SIGKILL it is.
    """
    if not alive(pid, started):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid, started) and time.monotonic() < deadline:
        time.sleep(0.005)


def become_subreaper() -> None:
    """Adopt orphaned descendants: a restored tree's parent (criu) exits at once, and only a
    subreaper can then wait for it; otherwise the machine's init would, slowly."""
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def copy_tree(sandbox_id: str, source: Path, target: Path) -> None:
    """``cp -a``: keeps owners, modes, device nodes and the overlay's whiteouts and xattrs."""
    proc = subprocess.run(
        ["cp", "-a", "--", str(source), str(target)], capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise SandboxError(
            sandbox_id,
            f"cannot copy {source} to {target}: {proc.stderr.strip()}",
            "check free space and permissions there",
        )


def tree_bytes(directory: Path) -> int:
    """Apparent size of the regular files below ``directory``."""
    total = 0
    for dirpath, _, files in os.walk(directory):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total
