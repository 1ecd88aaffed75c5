"""Memory, process-count and CPU limits for a sandbox, on cgroup v2 or the v1 hierarchies.

Each sandbox gets one cgroup per controller, nested under the cgroup of the process that
creates it (so a container's own limits still apply above it), named
``torpor-<sandbox id>-<incarnation>``. `limits_hit` reads the controllers' event counters back,
so that a sandbox killed at its memory limit can be reported as such.

No limit is set unless asked for: a machine without a writable controller can still run
sandboxes, and what a run may use is the operator's choice (the snapshot road passes it on).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .._errors import SandboxError

__all__ = [
    "CPU_PERIOD_US",
    "LimitHit",
    "available_controllers",
    "check_limits",
    "create_cgroups",
    "limits_hit",
    "remove_cgroups",
    "restore_args",
    "set_pids_limit",
]

_ROOT = Path("/sys/fs/cgroup")
_CONTROLLERS = ("memory", "pids", "cpu")
#: The CFS period a CPU limit is a share of (microseconds): 0.5 CPU is 50 ms per 100 ms.
CPU_PERIOD_US = 100_000
_MIN_QUOTA_US = 1_000  # the kernel's floor


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
    """Which of ``memory``, ``pids`` and ``cpu`` can limit a sandbox here."""
    found = []
    for controller in _CONTROLLERS:
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
    sandbox_id: str,
    incarnation: str,
    memory_limit: int | None,
    pids_limit: int | None,
    cpu_limit: float | None = None,
) -> list[Path]:
    """Make the sandbox's cgroups with their limits; returns their directories.

    ``incarnation`` tells apart a restored sandbox from its earlier life under the same id,
    so that tearing down one never touches the other's groups. ``cpu_limit`` is in CPUs
    (0.5: half of one CPU's time, 2: two CPUs' worth), enforced by the CFS quota.

    Raises:
        SandboxError: a limit is out of range, or this machine cannot enforce it.
    """
    check_limits(sandbox_id, memory_limit, pids_limit, cpu_limit)
    asked = (("memory", memory_limit), ("pids", pids_limit), ("cpu", cpu_limit))
    wanted = {controller: limit for controller, limit in asked if limit is not None}
    missing = set(wanted) - set(available_controllers())
    if missing:
        raise SandboxError(
            sandbox_id,
            f"the {', '.join(sorted(missing))} cgroup controller is not available to this process",
            "launch without memory_limit/pids_limit/cpu_limit, or run where cgroups are "
            "writable (`torpor doctor` shows which)",
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


def check_limits(
    sandbox_id: str, memory_limit: int | None, pids_limit: int | None, cpu_limit: float | None
) -> None:
    """Raise a SandboxError naming the limit that makes no sense (before anything is made)."""
    for name, value, low, unit in (
        ("memory_limit", memory_limit, 1 << 20, "bytes, at least 1 MiB"),
        ("pids_limit", pids_limit, 2, "tasks, at least 2 (the init and the command)"),
        ("cpu_limit", cpu_limit, _MIN_QUOTA_US / CPU_PERIOD_US, "CPUs, at least 0.01"),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
            raise SandboxError(
                sandbox_id, f"{name}={value!r} is out of range", f"pass a number of {unit}"
            )


def _write_limit(group: Path, controller: str, limit: float) -> None:
    if controller == "cpu":
        quota = max(_MIN_QUOTA_US, round(limit * CPU_PERIOD_US))
        if _unified():
            (group / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
    elif controller == "memory":
        if _unified():
            (group / "memory.max").write_text(str(int(limit)))
            swap = group / "memory.swap.max"
            if swap.exists():  # a limit that swap could sidestep is no limit
                swap.write_text("0")
        else:
            (group / "memory.limit_in_bytes").write_text(str(int(limit)))
    else:
        (group / "pids.max").write_text(str(int(limit)))


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


@dataclass(frozen=True)
class LimitHit:
    """A limit a sandbox ran into: ``resource`` is ``memory``, ``pids`` or ``cpu``;
    ``limit`` as it was set (bytes, tasks, CPUs); ``events`` how often (OOM kills, forks
    refused, CFS periods throttled)."""

    resource: str
    limit: float | None
    events: int

    @property
    def fatal(self) -> bool:
        """Whether the kernel killed a process for it (only memory kills; a refused fork
        fails in the program, a throttled one just runs slower)."""
        return self.resource == "memory"

    def __str__(self) -> str:
        if self.resource == "memory":
            what = f"out of memory (limit {_size(self.limit)})"
            return f"{what}: the kernel killed a process {self.events} time(s)"
        if self.resource == "pids":
            limit = "?" if self.limit is None else int(self.limit)
            return f"too many processes (limit {limit}): {self.events} fork(s) refused"
        return (
            f"CPU limit reached (limit {self.limit} CPUs): throttled in {self.events} "
            f"period(s) of {CPU_PERIOD_US // 1000} ms"
        )


def _size(limit: float | None) -> str:
    if limit is None:
        return "?"
    mib = limit / (1 << 20)
    return f"{mib:g} MiB" if mib < 1024 else f"{mib / 1024:g} GiB"


# Where each controller counts its hits, and under which key: (v2 file, v1 file, key).
_EVENTS = {
    "memory": ("memory.events", "memory.oom_control", "oom_kill"),
    "pids": ("pids.events", "pids.events", "max"),
    "cpu": ("cpu.stat", "cpu.stat", "nr_throttled"),
}


def limits_hit(groups: list[Path], limits: dict[str, float | int | None]) -> list[LimitHit]:
    """The limits among ``limits`` (per controller) that the tree in ``groups`` ran into."""
    hits = []
    for resource, limit in limits.items():
        if limit is None or resource not in _EVENTS:
            continue
        v2_file, v1_file, key = _EVENTS[resource]
        for group in groups:
            events = _counter(group / (v2_file if _unified() else v1_file), key)
            if events:
                hits.append(LimitHit(resource, limit, events))
                break
    return hits


def _counter(path: Path, key: str) -> int:
    """The value of ``key`` in a flat-keyed cgroup file ("key value" lines); 0 if absent."""
    try:
        text = path.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0
