"""A process tree in its own pid and mount namespaces on an overlay root, checkpointed by CRIU.

A sandbox directory holds::

    sandbox.json         who owns it, its init's pid, its cgroups (read by orphan clean-up)
    upper/ work/ merged/ the overlay root: base root below, the sandbox's changes in upper/
    workspace/           /workspace inside (unless launched with a host workspace)
    run/                 /run/torpor inside: stdout.log, stderr.log, init.log, ready, exit
"""

from __future__ import annotations

import enum
import json
import os
import re
import secrets
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .._config import Settings
from .._errors import CriuError, SandboxError
from . import _host
from ._cgroup import create_cgroups, remove_cgroups, restore_args, set_pids_limit
from ._criu import Criu, find_criu
from ._inspect import DEFAULT_GHOST_LIMIT, blocker_from_log, find_blockers, tree_processes
from ._lazy import LazyPages, PageSource
from ._records import Checkpoint, read_sandbox_meta, write_json

__all__ = ["Sandbox", "SandboxState"]

_INIT = Path(__file__).with_name("_init.py")
_READY_TIMEOUT = 30.0
_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}
# The two host directories bind-mounted into the sandbox; CRIU must be told they are external,
# or a restored copy would write to the original's directories.
_EXTERNALS = {"ws": "/workspace", "run": "/run/torpor"}
_CRIU_COMMON = ["--tcp-close", "--file-locks", "--network-lock", "skip"]


class SandboxState(enum.StrEnum):
    """Where a sandbox is in its life."""

    RUNNING = "running"
    EXITED = "exited"  # the command exited: returncode is its status
    KILLED = "killed"  # ended by a signal (kill(), the OOM killer, ...): returncode < 0
    CHECKPOINTED = "checkpointed"  # dumped and stopped by checkpoint()
    REMOVED = "removed"  # torn down: its directory is gone


class Sandbox:
    """A running (or finished) sandbox; build one with `launch`, `restore` or `fork`.

    Use it as a context manager, or call `teardown`, so nothing stays mounted or running.
    """

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
        # run/ moves into the checkpoint when a checkpoint without leave_running takes the
        # layers; stdout_path and stderr_path follow it.
        self._run_dir = directory / "run"

    # -- creating -------------------------------------------------------------------------

    @classmethod
    def launch(
        cls,
        cmd: Sequence[str],
        *,
        base_root: str | os.PathLike[str] = "/",
        workspace: str | os.PathLike[str] | None = None,
        network: bool = True,
        env: Mapping[str, str] | None = None,
        memory_limit: int | None = None,
        pids_limit: int | None = None,
        directory: str | os.PathLike[str] | None = None,
        settings: Settings | None = None,
        share: Sequence[str | os.PathLike[str]] = (),
    ) -> Sandbox:
        """Start ``cmd`` in a new sandbox and return once it runs.

        Args:
            cmd: the command; it runs in ``/workspace`` as pid 2, stdin ``/dev/null``,
                stdout and stderr to `stdout_path` and `stderr_path`.
            base_root: the read-only lower layer of the root filesystem; it must hold a
                ``python3`` (the sandbox's init is a small Python program).
            workspace: a host directory to mount at ``/workspace`` (default: a new empty one
                inside the sandbox directory).
            network: share the host's network (True) or get a private loopback-only one.
            env: variables on top of a minimal PATH/HOME/LANG; the host's environment
                (API keys included) never enters the sandbox.
            memory_limit: bytes, enforced by a cgroup. pids_limit: tasks, likewise.
            directory: where the sandbox keeps its files (default
                ``$TORPOR_HOME/sandboxes/<id>``); it must not exist yet.
            share: host paths the command must read although they are under ``/tmp``,
                which is otherwise private (e.g. a Python environment there).

        Raises:
            SandboxError: it could not start; the message says why and what to do.
        """
        settings = settings or Settings.from_env()
        sandbox_id = _new_id()
        if not cmd:
            raise SandboxError(sandbox_id, "no command given", "pass e.g. ['python3', 'agent.py']")
        _host.require_privileges(sandbox_id)
        started = time.perf_counter()
        box = cls(sandbox_id, _new_directory(sandbox_id, directory, settings), settings)
        base = Path(base_root).resolve()
        own_workspace = workspace is None
        ws = box.directory / "workspace" if own_workspace else Path(workspace).resolve()  # type: ignore[arg-type]
        box._meta = {
            "cmd": list(cmd),
            "base_root": str(base),
            "network": network,
            "memory_limit": memory_limit,
            "pids_limit": pids_limit,
            "workspace": str(ws),
        }
        try:
            box._save()
            if not ws.is_dir():
                if not own_workspace:
                    raise SandboxError(sandbox_id, f"workspace {ws} is no directory", "create it")
                ws.mkdir()
            (box.directory / "upper").mkdir()
            _host.prepare_root_layer(box.directory / "upper", base, _kept_tmp(base, share))
            (box.directory / "run").mkdir()
            for output in (box.stdout_path, box.stderr_path):
                output.touch()  # readable from the start; the command appends
            box._mount_root(base)
            box._cgroups = create_cgroups(sandbox_id, box._incarnation, memory_limit, pids_limit)
            box._save()
            box._start(base, ws, network, {**_BASE_ENV, **(env or {})})
        except BaseException:
            box.teardown()
            raise
        box.timings["launch"] = time.perf_counter() - started
        return box

    @classmethod
    def restore(
        cls,
        checkpoint: Checkpoint,
        *,
        directory: str | os.PathLike[str] | None = None,
        settings: Settings | None = None,
        lazy: bool = False,
        pages: PageSource | None = None,
    ) -> Sandbox:
        """Bring the checkpointed sandbox back, with the same id, where it left off.

        The checkpoint directory must stay in place while the sandbox runs: its workspace is
        the restored sandbox's read-only lower layer. Open TCP connections come back closed.

        Args:
            lazy: return as soon as the tree runs, before its private memory is back: each
                page is filled on first touch by a `criu lazy-pages` daemon, which copies
                the rest in the background (`pages_pending`, `wait_pages`). If the pages
                cannot all arrive the tree is killed (`lazy_error` says why); it never runs
                on memory that was not restored. See docs/sandbox.md, "Lazy restore".
            pages: with ``lazy``, where the daemon gets the pages instead of the checkpoint's
                page images (required when a lazy load left them out).

        Raises:
            SandboxError: the same sandbox still runs (use `fork` for a second copy), or the
                checkpoint's pages are elsewhere and no ``pages`` source was given.
            CriuError: CRIU could not restore it; the message quotes its log.
        """
        settings = settings or Settings.from_env()
        _host.require_privileges(checkpoint.sandbox_id)
        target = (
            Path(directory).absolute()
            if directory
            else _default_directory(checkpoint.sandbox_id, settings)
        )
        if target.exists():  # an earlier life of this sandbox: replaced, unless it still runs
            meta = read_sandbox_meta(target) or {}
            if _host.alive(meta.get("pid"), meta.get("pid_start")):
                raise SandboxError(
                    checkpoint.sandbox_id,
                    f"still runs (pid {meta['pid']}), so it cannot be restored a second time",
                    "kill or tear it down first, or use Sandbox.fork for an independent copy",
                )
            _host.remove_directory(checkpoint.sandbox_id, target)
        return cls._from_checkpoint(
            checkpoint, checkpoint.sandbox_id, target, settings, lazy=lazy, pages=pages
        )

    @classmethod
    def fork(
        cls,
        checkpoint: Checkpoint,
        *,
        directory: str | os.PathLike[str] | None = None,
        settings: Settings | None = None,
        lazy: bool = False,
        pages: PageSource | None = None,
    ) -> Sandbox:
        """Start an independent copy of the checkpointed sandbox, with a new id.

        Its root and workspace are copy-on-write over the checkpoint's; it may run beside the
        original and other forks (each has its own pid namespace). With ``network=True`` they
        share the host's ports: a listening socket cannot be restored twice.

        ``lazy`` and ``pages`` work as for `restore`.

        Raises:
            CriuError: CRIU could not restore it; the message quotes its log.
        """
        settings = settings or Settings.from_env()
        sandbox_id = _new_id()
        _host.require_privileges(sandbox_id)
        target = _new_directory(sandbox_id, directory, settings)
        return cls._from_checkpoint(
            checkpoint, sandbox_id, target, settings, lazy=lazy, pages=pages
        )

    @classmethod
    def _from_checkpoint(
        cls,
        checkpoint: Checkpoint,
        sandbox_id: str,
        directory: Path,
        settings: Settings,
        *,
        lazy: bool = False,
        pages: PageSource | None = None,
    ) -> Sandbox:
        started = time.perf_counter()
        if pages is not None and not lazy:
            raise SandboxError(sandbox_id, "a page source was given without lazy=True",
                               "pass lazy=True, or no pages")  # fmt: skip
        if pages is None and not checkpoint.pages_complete:
            raise SandboxError(
                sandbox_id, f"the page images of {checkpoint.directory} are incomplete "
                "(loaded for a lazy restore): restoring them as they are would give the "
                "processes zeroed memory", "restore it lazily with its page source, or load "
                "the snapshot again without lazy",
            )  # fmt: skip
        criu = find_criu(settings)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        box = cls(sandbox_id, directory, settings)
        box._meta = {
            "cmd": checkpoint.cmd,
            "base_root": checkpoint.base_root,
            "network": checkpoint.network,
            "memory_limit": checkpoint.memory_limit,
            "pids_limit": checkpoint.pids_limit,
            "workspace": str(directory / "workspace"),
            "restored_from": str(checkpoint.directory),
        }
        try:
            box._save()
            if lazy:  # started first: its start-up overlaps the copies and mounts below
                box._lazy = LazyPages(
                    criu, sandbox_id, checkpoint.images, directory / "lazy", pages
                )
                box._lazy.start()
            layers = [checkpoint.directory / "upper", checkpoint.directory / "run"]
            _host.copy_tree(sandbox_id, layers, directory)
            box._mount_root(Path(checkpoint.base_root))
            box._mount_overlay(
                directory / "workspace",
                checkpoint.directory / "workspace",
                directory / "ws-upper",
                directory / "ws-work",
            )
            box._cgroups = create_cgroups(
                sandbox_id, box._incarnation, checkpoint.memory_limit, checkpoint.pids_limit
            )
            box._save()
            _host.become_subreaper()
            box.timings["prepare"] = time.perf_counter() - started
            pidfile = directory / "restored.pid"
            args = [
                "restore", "-D", str(checkpoint.images), "-d", "--root", str(directory / "merged"),
                "--pidfile", str(pidfile), *_CRIU_COMMON,
                "--external", f"mnt[ws]:{directory / 'workspace'}",
                "--external", f"mnt[run]:{directory / 'run'}",
            ]  # fmt: skip
            args += restore_args(box._cgroups)
            if box._lazy is not None:
                waited = time.perf_counter()
                box._lazy.wait_ready()
                box.timings["lazy_ready_wait"] = time.perf_counter() - waited
                args += box._lazy.restore_args()
            # The log lives outside the directory until success: a failure removes the directory.
            log = settings.home / "logs" / f"restore-{sandbox_id}-{box._incarnation}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            # CRIU's helper processes run in the tree's cgroup: a tree at its task limit
            # could not be restored under that limit.
            set_pids_limit(box._cgroups, None)
            box.timings["criu_restore"] = criu.run(
                args, log=log, sandbox_id=sandbox_id, operation="restore",
                cached=box._lazy is not None,
            )  # fmt: skip
            set_pids_limit(box._cgroups, checkpoint.pids_limit)
            os.replace(log, directory / "restore.log")
            box._pid = int(pidfile.read_text())
            box._started = _host.start_time(box._pid)
            box._save()
            if box._lazy is not None:
                box._lazy.watch(box._kill_for_pages)
        except BaseException:
            box.teardown()
            raise
        box.timings["restore"] = time.perf_counter() - started
        return box

    def _kill_for_pages(self) -> None:
        """Called from the lazy transfer's thread when pages cannot all arrive."""
        if self._pid is not None:
            _host.kill_tree(self._pid, self._started)

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
            return self._returncode
        # The init records the command's own status. Without that record the init itself was
        # killed, and from outside only SIGKILL can kill a namespace's init (kill(), the OOM
        # killer); `unshare` does not pass that on faithfully, so it is not asked.
        exit_file = self._run_dir / "exit"
        self._returncode = (
            int(exit_file.read_text()) if exit_file.exists() else min(status, 0) or -signal.SIGKILL
        )
        self._state = SandboxState.EXITED if self._returncode >= 0 else SandboxState.KILLED
        return self._returncode

    def _wait_status(self) -> int | None:
        assert self._pid is not None
        if self._popen is not None:
            return self._popen.poll()
        try:
            pid, raw = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:  # not our child: another process restored it
            return None if _host.alive(self._pid, self._started) else -9
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

    def checkpoint(
        self,
        images_dir: str | os.PathLike[str],
        *,
        leave_running: bool = False,
        ghost_limit: int | None = None,
    ) -> Checkpoint:
        """Dump the whole tree and its layers into ``images_dir`` (created; must not exist).

        The layers (root, workspace, ``run/``) are taken while the tree is frozen, so they
        match its memory. Without ``leave_running`` the tree is stopped afterwards, holds no
        memory, and its layers move into the checkpoint (``stdout_path`` follows them); with
        it, the tree runs on and the layers are copied. Open TCP connections are recorded as
        closed: after a restore the process reads EOF and must reconnect.

        Args:
            ghost_limit: bytes of a deleted-but-open file that CRIU copies into the images
                (default 1 MiB); a larger one blocks the checkpoint.

        Raises:
            SandboxError: the sandbox is not running, or ``images_dir`` exists.
            CheckpointBlockedError: a process holds something CRIU cannot dump (io_uring,
                inotify on the overlay, a large deleted file, a unix socket to the outside);
                the message names the process, the resource and the way out. Nothing was
                dumped; the tree runs on untouched.
            CriuError: CRIU failed for another reason (the tree keeps running).
        """
        started = time.perf_counter()
        if self.state is not SandboxState.RUNNING:
            raise SandboxError(
                self.id, f"is {self._state}, not running: there is nothing to checkpoint",
                "launch or restore it first",
            )  # fmt: skip
        assert self._pid is not None
        _host.require_privileges(self.id)
        # Pages a lazy restore has not filled yet are absent from the process's page tables:
        # a dump now would silently leave them out of the checkpoint.
        self.wait_pages()
        criu = self._criu()
        limit = DEFAULT_GHOST_LIMIT if ghost_limit is None else ghost_limit
        blockers = find_blockers(self._pid, limit)
        if blockers:
            raise blockers[0].error(self.id, blockers[1:])
        target = Path(images_dir).absolute()
        try:
            target.mkdir(parents=True)
        except FileExistsError:
            raise SandboxError(
                self.id, f"checkpoint directory {target} already exists",
                "pass a new directory; checkpoints are never overwritten",
            ) from None  # fmt: skip
        (target / "images").mkdir()
        # A tree stopped by the dump changes nothing afterwards: its layers can then be moved
        # into the checkpoint after CRIU returns (renames, if on one filesystem). A tree that
        # runs on needs copies made while it is frozen, by CRIU's post-dump hook.
        move = not leave_running and _same_filesystem(target, self.directory)
        args = [
            "dump", "-t", str(self._pid), "-D", str(target / "images"), *_CRIU_COMMON,
            *(a for key, path in _EXTERNALS.items() for a in ("--external", f"mnt[{path}]:{key}")),
        ]  # fmt: skip
        if ghost_limit is not None:
            args += ["--ghost-limit", str(ghost_limit)]
        if not move:
            hook = target / "post-dump.sh"
            hook.write_text(self._post_dump_script(target))
            hook.chmod(0o755)
            args += ["--action-script", str(hook)]
        if leave_running:
            args.append("--leave-running")
        else:
            # Set first: the tree dies during the dump and poll() must not call that a kill.
            self._state = SandboxState.CHECKPOINTED
        # The log stays outside the checkpoint until the dump succeeds: a failure removes it.
        log = self._settings.home / "logs" / f"dump-{self.id}-{secrets.token_hex(4)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            dump_seconds = criu.run(args, log=log, sandbox_id=self.id, operation="dump")
        except CriuError as exc:
            self._state = SandboxState.RUNNING
            shutil.rmtree(target, ignore_errors=True)
            # CRIU thaws the tree when a dump fails: it runs on, and can name its processes.
            blocked = blocker_from_log(self.id, log, tree_processes(self._pid), limit)
            if blocked is not None:
                raise blocked from exc
            raise
        except BaseException:
            self._state = SandboxState.RUNNING
            raise
        os.replace(log, target / "dump.log")
        if move:
            self.wait(timeout=10)
            layers_started = time.perf_counter()
            self._move_layers(target)
            layers_seconds = time.perf_counter() - layers_started
        else:
            layers_seconds = _hook_seconds(target / "dump.log")
            if not leave_running:
                self.wait(timeout=10)
        checkpoint = Checkpoint(
            directory=target,
            sandbox_id=self.id,
            created_at=time.time(),
            cmd=self._meta["cmd"],
            base_root=self._meta["base_root"],
            network=self._meta["network"],
            memory_limit=self._meta["memory_limit"],
            pids_limit=self._meta["pids_limit"],
            leave_running=leave_running,
            dump_seconds=dump_seconds,
            layers_seconds=layers_seconds,
            total_seconds=time.perf_counter() - started,
            image_bytes=_host.tree_bytes(target / "images"),
            layer_bytes=sum(_host.tree_bytes(target / p) for p in ("upper", "workspace", "run")),
        )
        checkpoint._save()
        return checkpoint

    def _move_layers(self, target: Path) -> None:
        """Move the stopped tree's layers into the checkpoint ``target``.

        A host workspace given to `launch` belongs to the user: it is copied, never moved.
        """
        _host.unmount_all(self.directory / "merged")  # nothing uses it: the tree is gone
        os.rename(self.directory / "upper", target / "upper")
        os.rename(self._run_dir, target / "run")
        self._run_dir = target / "run"
        own_workspace = self.directory / "workspace"
        if self.workspace == own_workspace and not _host.mounts_under(own_workspace):
            os.rename(own_workspace, target / "workspace")
            self._meta["workspace"] = str(target / "workspace")
        else:  # a host workspace, or a restored sandbox's overlay: its whole view is copied
            _host.copy_tree(self.id, [self.workspace], target / "workspace")

    def kill(self) -> None:
        """Stop the whole tree at once (SIGKILL to its init) and wait until it is gone."""
        if self._pid is not None and self._returncode is None:
            _host.kill_tree(self._pid, self._started)
            self.wait(timeout=10)

    def teardown(self) -> None:
        """Kill the tree, unmount everything and delete the sandbox directory.

        A host workspace passed to `launch` is left in place. Safe to call twice.
        """
        if self._state is SandboxState.REMOVED:
            return
        self.kill()
        if self._lazy is not None:
            self._lazy.stop()
        remove_cgroups(self._cgroups)
        meta = read_sandbox_meta(self.directory)
        # A restore may have reused the directory since: then it is no longer ours to delete.
        if meta is None or meta.get("incarnation") == self._incarnation:
            _host.remove_directory(self.id, self.directory)
        self._state = SandboxState.REMOVED

    def __enter__(self) -> Sandbox:
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

    def _save(self) -> None:
        write_json(
            self.directory / "sandbox.json",
            {
                **self._meta,
                "id": self.id,
                "incarnation": self._incarnation,
                "owner": os.getpid(),
                "owner_start": _host.start_time(os.getpid()),
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

    def _start(self, base: Path, workspace: Path, network: bool, env: dict[str, str]) -> None:
        unshare = shutil.which("unshare")
        if unshare is None:
            raise SandboxError(self.id, "`unshare` is not on PATH", "install util-linux")
        config = {
            "root": str(self.directory / "merged"),
            "workspace": str(workspace),
            "run_dir": str(self.directory / "run"),
            "network": network,
            "cgroups": [str(g / "cgroup.procs") for g in self._cgroups],
            "python": _sandbox_python(self.id, base),
            "cmd": self._meta["cmd"],
            "env": env,
        }
        args = [unshare, "--mount", "--pid", "--fork", "--propagation", "private"]
        if not network:
            args.append("--net")
        init_log = self.directory / "run" / "init.log"
        with open(init_log, "ab") as log:
            self._popen = subprocess.Popen(
                [*args, sys.executable, "-I", "-S", str(_INIT), json.dumps(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                close_fds=True,
                start_new_session=True,
                env=env,
            )
        ready = self.directory / "run" / "ready"
        deadline = time.monotonic() + _READY_TIMEOUT
        while not ready.exists():
            code = self._popen.poll()
            if code is not None or time.monotonic() > deadline:
                what = "did not start in time" if code is None else f"ended with status {code}"
                detail = init_log.read_text(errors="replace").strip()[-500:]
                raise SandboxError(
                    self.id, f"its init {what} before the command ran: {detail or 'no output'}",
                    "check the command, base_root, and `torpor doctor`",
                )  # fmt: skip
            time.sleep(0.002)
        # The init's own word for its host pid: it may be gone already (with a command that
        # ended at once), and then poll() finds the status it recorded.
        pid, started = ready.read_text().split()
        self._pid, self._started = int(pid), int(started)
        self._save()

    def _post_dump_script(self, target: Path) -> str:
        """CRIU runs this after writing the images, while the tree is still frozen: the layer
        copies then match the memory image exactly (a file's size included, which a restore
        checks). One `cp` for all three when the workspace is the sandbox's own."""
        q = shlex.quote
        cp = "cp -a --reflink=auto --"
        if self.workspace == self.directory / "workspace":
            copy = f"exec {cp} upper run workspace {q(str(target))}/"
        else:
            copy = (
                f"{cp} upper run {q(str(target))}/ && "
                f"exec {cp} {q(str(self.workspace))} {q(str(target / 'workspace'))}"
            )
        return (
            "#!/bin/sh\n"
            '[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] || exit 0\n'
            f"cd {q(str(self.directory))} && {copy}\n"
        )


def _same_filesystem(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def _hook_seconds(log: Path) -> float:
    """How long CRIU's post-dump hook ran, from the timestamps of CRIU's log."""
    stamp = re.compile(r"^\((\d+\.\d+)\)")
    lines = log.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if line.endswith("Running post-dump scripts"):
            begun = stamp.match(line)
            after = [m for x in lines[i + 1 :] if (m := stamp.match(x)) and "\t[" not in x]
            if begun and after:
                return float(after[0].group(1)) - float(begun.group(1))
    return 0.0


def _new_id() -> str:
    return "sb-" + secrets.token_hex(6)


def _default_directory(sandbox_id: str, settings: Settings) -> Path:
    return settings.home / "sandboxes" / sandbox_id


def _new_directory(
    sandbox_id: str, directory: str | os.PathLike[str] | None, settings: Settings
) -> Path:
    path = Path(directory).absolute() if directory else _default_directory(sandbox_id, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        raise SandboxError(
            sandbox_id, f"directory {path} already exists", "pass a new directory"
        ) from None
    return path


def _sandbox_python(sandbox_id: str, base: Path) -> str:
    for candidate in (
        "/usr/bin/python3",
        "/usr/local/bin/python3",
        os.path.realpath(sys.executable),
    ):
        if os.access(base / candidate.lstrip("/"), os.X_OK):
            return candidate
    raise SandboxError(
        sandbox_id, f"base root {base} has no python3 in /usr/bin or /usr/local/bin",
        "the sandbox's init runs on Python: install python3 in the base root",
    )  # fmt: skip


def _kept_tmp(base: Path, share: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The entries of the base's ``/tmp`` that shared paths lie under."""
    tmp = (base / "tmp").resolve()
    kept = []
    for path in share:
        try:
            relative = Path(path).resolve().relative_to(tmp)
        except ValueError:
            continue
        if relative.parts:
            kept.append(relative.parts[0])
    return kept
