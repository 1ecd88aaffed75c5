"""Checkpointing a sandbox: CRIU dumps its tree, and its layers are taken while it is frozen.

Before the dump the tree is inspected (`_inspect.py`: what CRIU would refuse) and the host
files it has mapped are recorded (`_fingerprint.py`: what a restore must find the same).
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import shutil
import time
from pathlib import Path

from .._errors import CriuError, SandboxError
from . import _host
from ._core import CRIU_COMMON, EXTERNALS, SandboxCore, SandboxState
from ._fingerprint import base_root_record, write_base_root
from ._inspect import DEFAULT_GHOST_LIMIT, blocker_from_log, find_blockers, tree_processes
from ._records import Checkpoint

__all__ = ["Checkpointing"]


class Checkpointing(SandboxCore):
    """`Sandbox.checkpoint`: the running tree and its layers, dumped into a `Checkpoint`."""

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
        closed: after a restore the process reads EOF and must reconnect. The host files the
        tree has mapped (interpreter, libraries) are recorded in ``base-root.json``: a restore
        where they differ is refused.

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
        # From the live tree, before the dump stops it: the host files it runs on, which a
        # restore checks before asking CRIU.
        pids = tree_processes(self._pid)
        write_base_root(target, base_root_record(pids, self._pid, self.base_root))
        # A tree stopped by the dump changes nothing afterwards: its layers can then be moved
        # into the checkpoint after CRIU returns (renames, if on one filesystem). A tree that
        # runs on needs copies made while it is frozen, by CRIU's post-dump hook.
        move = not leave_running and _same_filesystem(target, self.directory)
        args = [
            "dump", "-t", str(self._pid), "-D", str(target / "images"), *CRIU_COMMON,
            *(a for key, path in EXTERNALS.items() for a in ("--external", f"mnt[{path}]:{key}")),
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
            cpu_limit=self._meta.get("cpu_limit"),
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
