"""Launching a sandbox: an overlay root over the base root, cgroups, and `_init.py` as its
pid 1 in new pid, mount and (by default) network namespaces, which starts the command; then
the watcher that stops it if this process dies (`_watch.py`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Self

from .._config import Settings
from .._errors import SandboxError
from . import _host, _proc
from ._cgroup import check_limits, create_cgroups
from ._core import SandboxCore, new_directory, new_id, read_run_file

__all__ = ["Launching", "Network", "host_network"]

#: What `Sandbox.launch` takes as ``network``: "private" (or False, the default) for a network
#: namespace of its own with loopback only; "host" (or True) to share the host's network.
Network = bool | Literal["host", "private"]

_INIT = Path(__file__).with_name("_init.py")
_READY_TIMEOUT = 30.0
_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
}


class Launching(SandboxCore):
    """`Sandbox.launch`: a new sandbox running a command."""

    @classmethod
    def launch(
        cls,
        cmd: Sequence[str],
        *,
        base_root: str | os.PathLike[str] = "/",
        workspace: str | os.PathLike[str] | None = None,
        network: Network = "private",
        env: Mapping[str, str] | None = None,
        memory_limit: int | None = None,
        pids_limit: int | None = None,
        cpu_limit: float | None = None,
        directory: str | os.PathLike[str] | None = None,
        settings: Settings | None = None,
        share: Sequence[str | os.PathLike[str]] = (),
    ) -> Self:
        """Start ``cmd`` in a new sandbox and return once it runs.

        Args:
            cmd: the command; it runs in ``/workspace`` as pid 2, stdin ``/dev/null``,
                stdout and stderr to `stdout_path` and `stderr_path`.
            base_root: the read-only lower layer of the root filesystem; it must hold a
                ``python3`` (the sandbox's init is a small Python program).
            workspace: a host directory to mount at ``/workspace`` (default: a new empty one
                inside the sandbox directory).
            network: ``"private"`` (the default; False means the same): a network namespace
                of its own with only loopback, so nothing on the host's network or its
                loopback (databases, `torpor server`, other sandboxes' ports) is reachable
                and no host port can be taken. ``"host"`` (or True): the host's network,
                only for commands that must reach it. The gateway is a unix socket in
                ``/run/torpor``: it works either way.
            env: variables on top of a minimal PATH/HOME/LANG; the host's environment
                (API keys included) never enters the sandbox.
            memory_limit: bytes, enforced by a cgroup (the OOM killer acts inside it).
                pids_limit: tasks, likewise. cpu_limit: CPUs (0.5 is half of one CPU's
                time), a CFS quota. None: no limit. `limits_hit` says which one it hit.
            directory: where the sandbox keeps its files (default
                ``$TORPOR_HOME/sandboxes/<id>``); it must not exist yet.
            share: host paths the command must read although they are under ``/tmp``,
                which is otherwise private (e.g. a Python environment there).

        Raises:
            SandboxError: it could not start; the message says why and what to do.
        """
        settings = settings or Settings.from_env()
        sandbox_id = new_id()
        if not cmd:
            raise SandboxError(sandbox_id, "no command given", "pass e.g. ['python3', 'agent.py']")
        host = host_network(sandbox_id, network)
        check_limits(sandbox_id, memory_limit, pids_limit, cpu_limit)
        _host.require_privileges(sandbox_id)
        started = time.perf_counter()
        box = cls(sandbox_id, new_directory(sandbox_id, directory, settings), settings)
        base = Path(base_root).resolve()
        own_workspace = workspace is None
        ws = box.directory / "workspace" if own_workspace else Path(workspace).resolve()  # type: ignore[arg-type]
        box._meta = {
            "cmd": list(cmd),
            "base_root": str(base),
            "network": host,
            "memory_limit": memory_limit,
            "pids_limit": pids_limit,
            "cpu_limit": cpu_limit,
            "workspace": str(ws),
        }
        try:
            box._save()
            if not ws.is_dir():
                if not own_workspace:
                    raise SandboxError(sandbox_id, f"workspace {ws} is no directory", "create it")
                ws.mkdir()
            (box.directory / "upper").mkdir()
            # Its TORPOR_HOME is hidden even when it is not the environment's (`hidden_paths`).
            _host.prepare_root_layer(
                box.directory / "upper", base, _kept_tmp(base, share),
                share=share, hide=[settings.home],
            )  # fmt: skip
            (box.directory / "run").mkdir()
            for output in (box.stdout_path, box.stderr_path):
                output.touch()  # readable from the start; the command appends
            box._mount_root(base)
            box._cgroups = create_cgroups(
                sandbox_id, box._incarnation, memory_limit, pids_limit, cpu_limit
            )
            box._save()
            box._start(base, ws, host, {**_BASE_ENV, **(env or {})})
        except BaseException:
            box.teardown()
            raise
        box.timings["launch"] = time.perf_counter() - started
        return box

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
        # Watched from now on: the init is this launcher's child, killed with it.
        self._start_watch(self._popen.pid, _proc.process_start_time(self._popen.pid), tree=True)
        run = self.directory / "run"
        deadline = time.monotonic() + _READY_TIMEOUT
        while (ready := self._read_ready(run)) is None:
            code = self._popen.poll()
            if code is not None or time.monotonic() > deadline:
                what = "did not start in time" if code is None else f"ended with status {code}"
                try:
                    detail = read_run_file(run, "init.log", 4096, tail=True).strip()[-500:]
                except OSError as exc:
                    detail = f"(init.log unreadable: {exc.strerror or exc})"
                raise SandboxError(
                    self.id, f"its init {what} before the command ran: {detail or 'no output'}",
                    "check the command, base_root, and `torpor doctor`",
                )  # fmt: skip
            time.sleep(0.002)
        # The init's own word for its host pid: it may be gone already (with a command that
        # ended at once), and then poll() finds the status it recorded.
        self._pid, self._started = ready
        self._save()

    def _read_ready(self, run: Path) -> tuple[int, int] | None:
        """The init's host pid and start time from ``run/ready``, None until it is there.

        The command runs before the init writes the file and may have planted one first (its
        ``/run/torpor`` is ``run/``): only a regular file with two numbers is read, and a pid
        that is alive but no child of this launch's `unshare` is refused, so that `kill` can
        never be aimed at a host process.

        Raises:
            SandboxError: the file is no regular file, malformed, or names another process.
        """
        try:
            fields = read_run_file(run, "ready", 64).split()
            pid, started = int(fields[0]), int(fields[1])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, IndexError) as exc:
            raise SandboxError(
                self.id, f"its run/ready is unusable ({exc}): the command tampered with it",
                "check what the command does in /run/torpor",
            ) from None  # fmt: skip
        assert self._popen is not None
        children = Path(f"/proc/{self._popen.pid}/task/{self._popen.pid}/children")
        try:
            ours = pid in {int(c) for c in children.read_text().split()}
        except OSError:  # `unshare` has ended: so has its init
            ours = False
        if not ours and _proc.alive(pid, started):
            raise SandboxError(
                self.id, f"its run/ready names pid {pid}, which is not its init: the command "
                "tampered with it", "check what the command does in /run/torpor",
            )  # fmt: skip
        return pid, started


def host_network(sandbox_id: str, network: object) -> bool:
    """Whether ``network`` (a `Network`) asks for the host's network.

    Raises:
        SandboxError: it is none of "host", "private", True, False.
    """
    if network is True or network == "host":
        return True
    if network is False or network == "private":
        return False
    raise SandboxError(
        sandbox_id, f"network={network!r} is no network mode",
        'pass network="private" (the default: loopback only) or network="host"',
    )  # fmt: skip


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
