"""Restoring a checkpoint: the same sandbox back where it left off, or an independent fork.

Before CRIU is asked, the checkpoint's base root is checked (`_fingerprint.py`): a process
must come back over the same interpreter and libraries it had mapped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Self

from .._config import Settings
from .._errors import SandboxError
from . import _host, _proc
from ._cgroup import create_cgroups, restore_args, set_pids_limit
from ._core import CRIU_COMMON, SandboxCore, default_directory, new_directory, new_id
from ._criu import find_criu
from ._fingerprint import check_base_root
from ._lazy import LazyPages, PageSource
from ._records import Checkpoint, read_sandbox_meta

__all__ = ["Restoring"]


class Restoring(SandboxCore):
    """`Sandbox.restore` and `Sandbox.fork`: a sandbox brought back from a `Checkpoint`."""

    @classmethod
    def restore(
        cls,
        checkpoint: Checkpoint,
        *,
        directory: str | os.PathLike[str] | None = None,
        settings: Settings | None = None,
        lazy: bool = False,
        pages: PageSource | None = None,
    ) -> Self:
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
            BaseRootMismatchError: a host file its processes had mapped (the interpreter, a
                library) is not the same here (`base-root.json`); CRIU was not asked.
            CriuError: CRIU could not restore it; the message quotes its log.
        """
        settings = settings or Settings.from_env()
        _host.require_privileges(checkpoint.sandbox_id)
        _refuse_unrestorable(checkpoint, checkpoint.sandbox_id, lazy, pages)
        target = (
            Path(directory).absolute()
            if directory
            else default_directory(checkpoint.sandbox_id, settings)
        )
        if target.exists():  # an earlier life of this sandbox: replaced, unless it still runs
            meta = read_sandbox_meta(target) or {}
            if _proc.alive(meta.get("pid"), meta.get("pid_start")):
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
    ) -> Self:
        """Start an independent copy of the checkpointed sandbox, with a new id.

        Its root and workspace are copy-on-write over the checkpoint's; it may run beside the
        original and other forks (each has its own pid namespace). With ``network=True`` they
        share the host's ports: a listening socket cannot be restored twice.

        ``lazy`` and ``pages`` work as for `restore`.

        Raises:
            BaseRootMismatchError: as for `restore`.
            CriuError: CRIU could not restore it; the message quotes its log.
        """
        settings = settings or Settings.from_env()
        sandbox_id = new_id()
        _host.require_privileges(sandbox_id)
        _refuse_unrestorable(checkpoint, sandbox_id, lazy, pages)
        target = new_directory(sandbox_id, directory, settings)
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
    ) -> Self:
        started = time.perf_counter()
        criu = find_criu(settings)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        box = cls(sandbox_id, directory, settings)
        cpu_limit = checkpoint.cpu_limit  # None from a checkpoint older than the field
        box._meta = {
            "cmd": checkpoint.cmd,
            "base_root": checkpoint.base_root,
            # The network mode comes back as it was: CRIU recreates a private network
            # namespace (its loopback, its listening sockets) as a new one per restore,
            # and leaves a tree that shared the host's network in the host's.
            "network": checkpoint.network,
            "memory_limit": checkpoint.memory_limit,
            "pids_limit": checkpoint.pids_limit,
            "cpu_limit": cpu_limit,
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
                sandbox_id,
                box._incarnation,
                checkpoint.memory_limit,
                checkpoint.pids_limit,
                cpu_limit,
            )
            box._save()
            _host.become_subreaper()
            box.timings["prepare"] = time.perf_counter() - started
            pidfile = directory / "restored.pid"
            args = [
                "restore", "-D", str(checkpoint.images), "-d", "--root", str(directory / "merged"),
                "--pidfile", str(pidfile), *CRIU_COMMON,
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
            box._started = _proc.process_start_time(box._pid)
            box._save()
            box._start_watch(box._pid, box._started)
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
            _proc.kill_tree(self._pid, self._started)


def _refuse_unrestorable(
    checkpoint: Checkpoint, sandbox_id: str, lazy: bool, pages: PageSource | None
) -> None:
    """Raise before anything is made or asked of CRIU if the checkpoint cannot come back
    intact: its memory or the host files its processes had mapped would not be the same."""
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
    check_base_root(checkpoint.directory, checkpoint.base_root, str(checkpoint.directory))
