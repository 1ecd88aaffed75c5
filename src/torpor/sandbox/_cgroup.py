"""Memory and process-count limits for a sandbox, on cgroup v2 or the v1 hierarchies.

Each sandbox gets one cgroup per controller, nested under the cgroup of the process that
creates it (so a container's own limits still apply above it), named
``torpor-<sandbox id>-<incarnation>``.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from .._errors import SandboxError

__all__ = [
    "available_controllers",
    "create_cgroups",
    "remove_cgroups",
    "restore_args",
    "set_pids_limit",
]

_ROOT = Path("/sys/fs/cgroup")


def _unified() -> bool:
    return (_ROOT / "cgroup.controllers").exists()


def _own_path(controller: str) -> str:
    """This process's cgroup path in the hierarchy that holds ``controller``."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (_unified() and controllers == "") or controller in controllers.split(","):
            return path
    raise LookupError(controller)


def _parent_dir(controller: str) -> Path:
    base = _ROOT if _unified() else _ROOT / controller
    return base / _own_path(controller).lstrip("/")


def available_controllers() -> list[str]:
    """Which of ``memory`` and ``pids`` can limit a sandbox here."""
    found = []
    for controller in ("memory", "pids"):
        try:
            parent = _parent_dir(controller)
        except (LookupError, OSError):
            continue
        if _unified():
            enabled = (parent / "cgroup.controllers").read_text().split()
            if controller not in enabled:
                continue
        if os.access(parent, os.W_OK):
            found.append(controller)
    return found


def create_cgroups(
    sandbox_id: str, incarnation: str, memory_limit: int | None, pids_limit: int | None
) -> list[Path]:
    """Make the sandbox's cgroups with their limits; returns their directories.

    ``incarnation`` tells apart a restored sandbox from its earlier life under the same id,
    so that tearing down one never touches the other's groups.

    Raises:
        SandboxError: a limit was asked for that this machine cannot enforce.
    """
    asked = (("memory", memory_limit), ("pids", pids_limit))
    wanted = {controller: limit for controller, limit in asked if limit is not None}
    missing = set(wanted) - set(available_controllers())
    if missing:
        raise SandboxError(
            sandbox_id,
            f"the {', '.join(sorted(missing))} cgroup controller is not available to this process",
            "launch without memory_limit/pids_limit, or run where cgroups are writable "
            "(`torpor doctor` shows which)",
        )
    made = []
    try:
        for controller, limit in wanted.items():
            parent = _parent_dir(controller)
            if _unified():
                _enable_in_subtree(parent, controller)
            group = parent / f"torpor-{sandbox_id}-{incarnation}"
            group.mkdir(exist_ok=True)
            if group not in made:  # cgroup v2: one group holds both controllers
                made.append(group)
            _write_limit(group, controller, limit)
    except OSError as exc:
        remove_cgroups(made)
        raise SandboxError(
            sandbox_id, f"cannot set up its cgroups: {exc}", "check `torpor doctor`"
        ) from None
    return made


def _enable_in_subtree(parent: Path, controller: str) -> None:
    control = parent / "cgroup.subtree_control"
    if controller not in control.read_text().split():
        control.write_text(f"+{controller}")


def _write_limit(group: Path, controller: str, limit: int) -> None:
    if controller == "memory":
        if _unified():
            (group / "memory.max").write_text(str(limit))
            swap = group / "memory.swap.max"
            if swap.exists():  # a limit that swap could sidestep is no limit
                swap.write_text("0")
        else:
            (group / "memory.limit_in_bytes").write_text(str(limit))
    else:
        (group / "pids.max").write_text(str(limit))


def set_pids_limit(groups: list[Path], limit: int | None) -> None:
    """Change the task limit of groups that have one (None: no limit)."""
    for group in groups:
        limit_file = group / "pids.max"
        if limit_file.exists():
            limit_file.write_text("max" if limit is None else str(limit))


def remove_cgroups(groups: list[Path], wait: float = 5.0) -> None:
    """Remove the groups; a group empties only once its last task is reaped, hence the wait."""
    deadline = time.monotonic() + wait
    for group in groups:
        while group.exists():
            try:
                group.rmdir()
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        with contextlib.suppress(OSError):
            group.rmdir()


def restore_args(groups: list[Path]) -> list[str]:
    """CRIU restore options that put the tree into ``groups`` (made by `create_cgroups`).

    CRIU would otherwise recreate the *dumped* sandbox's cgroups, so a fork would share the
    original's limits and keep its group alive. With no limits, the tree simply stays in the
    restorer's own cgroups.
    """
    if not groups:
        return ["--manage-cgroups=ignore"]  # an optional argument: "=" or criu rejects it
    args = []
    for group in groups:
        rel = group.relative_to(_ROOT)
        if _unified():
            args += ["--cgroup-root", f"/{rel}"]
        else:
            controller, *path = rel.parts
            args += ["--cgroup-root", f"{controller}:/{'/'.join(path)}"]
    return args
