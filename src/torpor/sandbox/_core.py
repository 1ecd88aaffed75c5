"""What every sandbox is, however it began: its files, its state and its end.

A sandbox directory holds::

    sandbox.json         who owns it, its init's pid, its cgroups (read by orphan clean-up)
    upper/ work/ merged/ the overlay root: base root below, the sandbox's changes in upper/
    workspace/           /workspace inside (unless launched with a host workspace)
    run/                 /run/torpor inside: stdout.log, stderr.log, init.log, ready, exit

`Sandbox` is this core with the three ways a tree changes hands: `_launch.py` starts one,
`_checkpoint.py` dumps one, `_restore.py` brings one back (or forks it).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import secrets
import select
import signal
import stat
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .._config import Settings
from .._errors import SandboxError
from . import _host, _proc
from ._cgroup import LimitHit, limits_hit, remove_cgroups
from ._criu import Criu, find_criu
from ._lazy import LazyPages
from ._records import read_sandbox_meta, write_json
from ._watch import Watch

__all__ = [
    "CRIU_COMMON",
    "EXTERNALS",
    "SandboxCore",
    "SandboxState",
    "default_directory",
    "new_directory",
    "new_id",
    "read_run_file",
]

_log = logging.getLogger(__name__)
#: The most of an ``exit`` or ``ready`` file that is read: a number or two and a newline.
_RECORD_LIMIT = 64

# The two host directories bind-mounted into the sandbox; CRIU must be told they are external,
# or a restored copy would write to the original's directories.
EXTERNALS = {"ws": "/workspace", "run": "/run/torpor"}
CRIU_COMMON = ["--tcp-close", "--file-locks", "--network-lock", "skip"]


class SandboxState(enum.StrEnum):
    """Where a sandbox is in its life."""

    RUNNING = "running"
    EXITED = "exited"  # the command exited: returncode is its status
    KILLED = "killed"  # ended by a signal (kill(), the OOM killer, ...): returncode < 0
    CHECKPOINTED = "checkpointed"  # dumped and stopped by checkpoint()
    REMOVED = "removed"  # torn down: its directory is gone


class SandboxCore:
    """A sandbox's state and files, and what can be done with a running or finished one;
    `Sandbox` adds how one is launched, checkpointed and restored."""

    def __init__(self, sandbox_id: str, directory: Path, settings: Settings) -> None:
        self.id = sandbox_id
        self.directory = directory
        self.timings: dict[str, float] = {}
        self._settings = settings
        self._incarnation = secrets.token_hex(4)
        self._meta: dict[str, Any] = {}
        self._pid: int | None = None
        self._started: int | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._returncode: int | None = None
        self._state = SandboxState.RUNNING
        self._cgroups: list[Path] = []
        self._lazy: LazyPages | None = None
        self._watch: Watch | None = None
        # run/ moves into the checkpoint when a checkpoint without leave_running takes the
        # layers; stdout_path and stderr_path follow it.
        self._run_dir = directory / "run"

    # -- using ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The host pid of the sandbox's init (pid 1 inside); None once it is gone."""
        return self._pid if self.state is SandboxState.RUNNING else None

    @property
    def stdout_path(self) -> Path:
        """The command's stdout, a file on the host (in the checkpoint once one took it)."""
        return self._run_dir / "stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self._run_dir / "stderr.log"

    @property
    def workspace(self) -> Path:
        """The host directory seen as ``/workspace`` inside."""
        return Path(self._meta["workspace"])

    @property
    def base_root(self) -> str:
        """The read-only lower layer of its root filesystem, on the host."""
        return str(self._meta["base_root"])

    @property
    def root(self) -> Path:
        """The host path of the sandbox's root filesystem (the overlay), while it exists."""
        return self.directory / "merged"

    @property
    def state(self) -> SandboxState:
        self.poll()
        return self._state

    @property
    def returncode(self) -> int | None:
        """The command's exit status (negative: killed by that signal); None while running."""
        return self.poll()

    @property
    def pages_pending(self) -> bool:
        """Whether a lazy restore is still bringing memory in (False for a normal one)."""
        return self._lazy is not None and self._lazy.pending

    @property
    def lazy_error(self) -> Exception | None:
        """Why a lazy restore's pages could not all arrive (the tree was killed), if so."""
        return self._lazy.error if self._lazy is not None else None

    def wait_pages(self, timeout: float | None = None) -> None:
        """Block until a lazy restore's memory is all in place (at once for a normal one).

        Raises:
            TimeoutError: pages still arriving after ``timeout`` seconds.
            CriuError: the transfer failed and the tree was killed.
        """
        if self._lazy is not None:
            self._lazy.wait(timeout)

    def poll(self) -> int | None:
        """The exit status if the sandbox has ended, else None."""
        if self._returncode is not None or self._pid is None:
            return self._returncode
        status = self._wait_status()
        if status is None:
            return None
        if self._state is SandboxState.CHECKPOINTED:
            self._returncode = -signal.SIGKILL  # CRIU's, after the dump
            self._end_watch()
            return self._returncode
        # The init records the command's own status. Without that record the init itself was
        # killed, and from outside only SIGKILL can kill a namespace's init (kill(), the OOM
        # killer); `unshare` does not pass that on faithfully, so it is not asked.
        self._returncode = self._recorded_status()
        if self._returncode is None:
            self._returncode = min(status, 0) or -signal.SIGKILL
        self._state = SandboxState.EXITED if self._returncode >= 0 else SandboxState.KILLED
        self._end_watch()
        return self._returncode

    def _recorded_status(self) -> int | None:
        """The status the init wrote to ``run/exit``, or None if it wrote none.

        ``run/`` is the sandbox's ``/run/torpor``: its tree may have put a link, a FIFO or
        anything else there. Only a regular file holding one number is taken; anything else
        is logged and the sandbox counts as killed.
        """
        try:
            text = read_run_file(self._run_dir, "exit", _RECORD_LIMIT)
        except FileNotFoundError:
            return None
        except OSError as exc:
            _log.warning("sandbox %s: its run/exit is unreadable (%s); counted as killed",
                         self.id, exc.strerror or exc)  # fmt: skip
            return None
        try:
            return int(text)
        except ValueError:
            _log.warning("sandbox %s: its run/exit holds no exit status (%r); counted as killed",
                         self.id, text[:_RECORD_LIMIT])  # fmt: skip
            return None

    def _wait_status(self) -> int | None:
        assert self._pid is not None
        if self._popen is not None:
            return self._popen.poll()
        try:
            pid, raw = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:  # not our child: another process restored it
            return None if _proc.alive(self._pid, self._started) else -9
        return None if pid == 0 else os.waitstatus_to_exitcode(raw)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the sandbox to end and return its exit status.

        Raises:
            TimeoutError: it still runs after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pidfd = self._pidfd()
        try:
            while (code := self.poll()) is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"sandbox {self.id} still runs after {timeout} s")
                if pidfd is None:
                    time.sleep(0.005)
                else:  # readable the moment the process ends
                    select.select([pidfd], [], [], 1.0 if left is None else min(left, 1.0))
        finally:
            if pidfd is not None:
                os.close(pidfd)
        return code

    def _pidfd(self) -> int | None:
        """A pidfd of the process whose end `poll` looks for: the launcher's `unshare`
        (parent of the init), or the restored init itself."""
        pid = self._popen.pid if self._popen is not None else self._pid
        if pid is None:
            return None
        try:
            return os.pidfd_open(pid)
        except OSError:  # already gone (and reaped): poll() sees it at once
            return None

    def limits_hit(self) -> list[LimitHit]:
        """The cgroup limits this sandbox ran into since it (or its restored copy) began:
        the OOM killer at its memory limit, forks refused at its task limit, time throttled
        at its CPU limit. Empty without limits, or once torn down (ask before `teardown`).

        For a sandbox killed by a signal, a memory hit says why: e.g. ``str(hit)`` reads
        "out of memory (limit 512 MiB): the kernel killed a process 1 time".
        """
        if self._state is SandboxState.REMOVED:
            return []
        return limits_hit(self._cgroups, self._limits())

    def _limits(self) -> dict[str, float | int | None]:
        return {
            "memory": self._meta.get("memory_limit"),
            "pids": self._meta.get("pids_limit"),
            "cpu": self._meta.get("cpu_limit"),
        }

    def kill(self) -> None:
        """Stop the whole tree at once (SIGKILL to its init) and wait until it is gone."""
        if self._pid is not None and self._returncode is None:
            _proc.kill_tree(self._pid, self._started)
            self.wait(timeout=10)

    def teardown(self) -> None:
        """Kill the tree, unmount everything and delete the sandbox directory.

        A host workspace passed to `launch` is left in place. Safe to call twice.
        """
        if self._state is SandboxState.REMOVED:
            return
        self.kill()
        self._end_watch()
        if self._popen is not None and self._pid is None:
            # A launch that failed before its init was ready: the watcher, just ended,
            # killed the launcher and what it had started. Reaped here.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=5)
        if self._lazy is not None:
            self._lazy.stop()
        remove_cgroups(self._cgroups)
        meta = read_sandbox_meta(self.directory)
        # A restore may have reused the directory since: then it is no longer ours to delete.
        if meta is None or meta.get("incarnation") == self._incarnation:
            _host.remove_directory(self.id, self.directory)
        self._state = SandboxState.REMOVED

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    def __repr__(self) -> str:
        return f"<Sandbox {self.id} {self._state} pid={self._pid} at {self.directory}>"

    # -- internals ------------------------------------------------------------------------

    def _criu(self) -> Criu:
        return find_criu(self._settings)

    def _start_watch(self, pid: int, started: int | None, tree: bool = False) -> None:
        """Start the watcher that kills the tree if this process dies (`_watch.py`): on the
        init ``pid``, or with ``tree`` on its launcher ``pid``."""
        begun = time.perf_counter()
        try:
            self._watch = Watch.start(pid, started, self.directory / "watch.log", tree)
        except OSError as exc:
            raise SandboxError(
                self.id, f"cannot start the watcher that stops it when this process dies: {exc}",
                "sandboxes need Linux 5.3 or later (pidfd_open); `torpor doctor` checks the host",
            ) from None  # fmt: skip
        self.timings["watch"] = time.perf_counter() - begun

    def _end_watch(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None

    def _save(self) -> None:
        write_json(
            self.directory / "sandbox.json",
            {
                **self._meta,
                "id": self.id,
                "incarnation": self._incarnation,
                "owner": os.getpid(),
                "owner_start": _proc.process_start_time(os.getpid()),
                "pid": self._pid,
                "pid_start": self._started,
                "cgroups": [str(g) for g in self._cgroups],
            },
        )

    def _mount_overlay(self, target: Path, lower: Path, upper: Path, work: Path) -> None:
        for path in (target, lower, upper, work):
            if {",", ":", "\\"} & set(str(path)):
                raise SandboxError(
                    self.id, f"path {path} has a comma, colon or backslash",
                    "overlayfs cannot take it; choose TORPOR_HOME or directories without them",
                )  # fmt: skip
        for path in (target, upper, work):
            path.mkdir(exist_ok=True)
        # volatile: the overlay never syncs its upper layer (unmounting one costs ~6 ms of
        # sync otherwise, paid by every checkpoint). What survives a host crash is the
        # checkpoints, never a running sandbox's layers.
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        try:
            _host.mount(self.id, "overlay", target, "overlay", f"{options},volatile")
        except SandboxError:  # a kernel older than 5.10
            _host.mount(self.id, "overlay", target, "overlay", options)

    def _mount_root(self, base: Path) -> None:
        if not base.is_dir():
            raise SandboxError(self.id, f"base root {base} is no directory", "pass an existing one")
        d = self.directory
        self._mount_overlay(d / "merged", base, d / "upper", d / "work")


def read_run_file(run_dir: Path, name: str, limit: int, *, tail: bool = False) -> str:
    """The text of the file ``name`` in a sandbox's ``run/`` (its ``/run/torpor``).

    The sandbox's tree writes there and may have put a link, a FIFO or a device in place of
    the file: only a regular file is read, opened without following links (``run/`` itself
    too, from the sandbox directory's descriptor), and not opened for reading before it is
    known to be one (``O_PATH`` first: opening a FIFO blocks, a device could act). With
    ``tail``, its last ``limit`` bytes; without, a larger file is refused.

    Raises:
        OSError: it is missing (FileNotFoundError), no regular file, or larger than
            ``limit`` bytes without ``tail``.
    """
    nofollow = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    parent = os.open(run_dir.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        directory = os.open(run_dir.name, nofollow | os.O_DIRECTORY, dir_fd=parent)
    finally:
        os.close(parent)
    try:
        handle = os.open(name, nofollow, dir_fd=directory)
    finally:
        os.close(directory)
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise OSError(errno.EINVAL, f"run/{name} is no regular file")
        # Reopened from the O_PATH descriptor: the very file checked, not a new lookup.
        readable = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    finally:
        os.close(handle)
    try:
        size = os.fstat(readable).st_size
        if size > limit and not tail:
            raise OSError(errno.EFBIG, f"run/{name} holds {size} bytes, more than {limit}")
        return os.pread(readable, limit, max(0, size - limit)).decode(errors="replace")
    finally:
        os.close(readable)


def new_id() -> str:
    return "sb-" + secrets.token_hex(6)


def default_directory(sandbox_id: str, settings: Settings) -> Path:
    return settings.home / "sandboxes" / sandbox_id


def new_directory(
    sandbox_id: str, directory: str | os.PathLike[str] | None, settings: Settings
) -> Path:
    path = Path(directory).absolute() if directory else default_directory(sandbox_id, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        raise SandboxError(
            sandbox_id, f"directory {path} already exists", "pass a new directory"
        ) from None
    return path
