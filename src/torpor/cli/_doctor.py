"""`torpor doctor`: check what torpor needs and say how to fix what is missing."""

from __future__ import annotations

import gzip
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from .._config import Settings, redact_url
from .._errors import CriuNotFoundError, TorporError
from ..sandbox import (
    Criu,
    Sandbox,
    available_controllers,
    find_criu,
    find_orphans,
    fstype,
    has_sys_admin,
    remove_orphans,
)
from ..store import SCHEMA_VERSION, StoreNotFoundError, open_store

__all__ = ["doctor"]


class _Report:
    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.ok = True

    def good(self, what: str, detail: str) -> None:
        self.echo(f"ok    {what:<12} {detail}")

    def bad(self, what: str, detail: str, fix: str) -> None:
        self.ok = False
        self.echo(f"FAIL  {what:<12} {detail}\n      {'':<12} fix: {fix}")

    def warn(self, what: str, detail: str, fix: str) -> None:
        """Something optional is missing: worth fixing, but torpor works without it."""
        self.echo(f"WARN  {what:<12} {detail}\n      {'':<12} fix: {fix}")

    def note(self, what: str, detail: str) -> None:
        self.echo(f"--    {what:<12} {detail}")


def doctor(settings: Settings, echo: Callable[[str], None], cleanup: bool = False) -> bool:
    """Print one line per check; True if nothing failed.

    With ``cleanup``, sandboxes left behind by crashed processes are removed, not just listed.
    """
    report = _Report(echo)
    report.good("python", f"{platform.python_implementation()} {sys.version.split()[0]}")
    report.good("kernel", f"{platform.system()} {platform.release()} ({platform.machine()})")
    _check_home(report, settings.home)
    _check_store(report, settings)
    _check_blobs(report, settings.blob_url)
    _check_snapshot_key(report, settings)
    _check_snapshot_road(report, settings)
    _check_orphans(report, settings, cleanup)
    _check_criu_cache(report, cleanup)
    return report.ok


def _writable(directory: Path) -> str | None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".doctor-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _check_home(report: _Report, home: Path) -> None:
    problem = _writable(home)
    if problem:
        report.bad("home", f"{home}: {problem}", "set TORPOR_HOME to a writable directory")
    else:
        report.good("home", str(home))


def _check_store(report: _Report, settings: Settings) -> None:
    shown = redact_url(settings.database_url)
    try:
        with open_store(settings=settings, create=False) as store:
            version = store.schema_version()
            runs = len(store.list_runs())
    except StoreNotFoundError:
        # Checking creates nothing: a mistyped URL must not leave an empty store behind.
        report.note("store", f"{shown}: not created yet (`torpor worker` or `torpor run` do)")
        return
    except TorporError as exc:
        report.bad("store", exc.message, "see the message; TORPOR_DATABASE_URL picks the store")
        return
    detail = f"{shown} (schema v{version} of v{SCHEMA_VERSION}, {runs} runs)"
    if settings.database_url.startswith("sqlite:"):
        detail += f", synchronous={settings.sqlite_synchronous}"
    report.good("store", detail)


def _check_snapshot_key(report: _Report, settings: Settings) -> None:
    """Where the snapshot key comes from, and whether its file is private; nothing is
    generated here (the first snapshot does that)."""
    from ..snapshots import KEY_FILE, SnapshotKey

    if (os.environ.get("TORPOR_SNAPSHOT_KEY") or "").strip().casefold() == "none":
        report.warn(
            "snapshot key",
            "TORPOR_SNAPSHOT_KEY=none: snapshots (process memory, keys in it) are stored "
            "unencrypted",
            "unset it to encrypt with a key generated under TORPOR_HOME, or set a key",
        )
        return
    generated = settings.home / KEY_FILE
    named = os.environ.get("TORPOR_SNAPSHOT_KEY_FILE")
    if not os.environ.get("TORPOR_SNAPSHOT_KEY") and not named and not generated.exists():
        report.note("snapshot key", f"{generated}: generated (mode 0600) by the first snapshot")
        return
    try:
        key = SnapshotKey.from_env(home=settings.home)
    except TorporError as exc:
        report.bad("snapshot key", exc.message, "see the message")
        return
    source = "TORPOR_SNAPSHOT_KEY" if os.environ.get("TORPOR_SNAPSHOT_KEY") else named or generated
    fingerprint = key.fingerprint.hex() if key is not None else "none"
    report.good("snapshot key", f"{source} (fingerprint {fingerprint})")


def _check_blobs(report: _Report, blob_url: str) -> None:
    parts = urlsplit(blob_url)
    if parts.scheme == "file":
        path = Path(parts.path)
        problem = _writable(path)
        if problem:
            report.bad("blobs", f"{path}: {problem}", "set TORPOR_BLOB_URL=file:///writable/dir")
        else:
            report.good("blobs", blob_url)
    elif parts.scheme == "s3":
        report.note("blobs", f"{blob_url}: S3 blob stores are not checked in this version yet")
    else:
        report.bad(
            "blobs",
            f"unsupported TORPOR_BLOB_URL {blob_url!r}",
            "use file:///path or s3://bucket/prefix",
        )


# -- the snapshot road -------------------------------------------------------------------

# Kernel options CRIU and the sandbox need; /proc/config.gz shows them when the kernel has it.
_KERNEL_OPTIONS = ["CONFIG_CHECKPOINT_RESTORE", "CONFIG_NAMESPACES", "CONFIG_PID_NS"]
# Options that only make things faster or lighter (lazy restore, incremental dumps).
_KERNEL_EXTRAS = {
    "CONFIG_USERFAULTFD": "no USERFAULTFD: no lazy restore",
    "CONFIG_MEM_SOFT_DIRTY": "no MEM_SOFT_DIRTY: every checkpoint dumps all memory",
}

# The smoke test's process: it holds a connected TCP socket (to itself, on the sandbox's
# private loopback), the case new kernels break most often.
_SMOKE = """
import socket, time
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname())
peer, _ = server.accept()
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def _check_snapshot_road(report: _Report, settings: Settings) -> None:
    """Kernel, privileges, overlayfs, cgroups, CRIU, then a real sandbox checkpoint/restore."""
    ready = _check_kernel(report)
    if not has_sys_admin():
        who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
        report.bad(
            "privileges",
            f"running as {who} without CAP_SYS_ADMIN",
            "run torpor as root (in a container: --privileged): sandboxes mount and make "
            "namespaces, and CRIU needs CAP_SYS_ADMIN",
        )
        ready = False
    else:
        report.good("privileges", f"uid {os.geteuid()} with CAP_SYS_ADMIN")
    if "overlay" not in Path("/proc/filesystems").read_text():
        report.bad("overlayfs", "not in /proc/filesystems", "load it: modprobe overlay")
        ready = False
    else:
        report.good("overlayfs", "available")
    controllers = available_controllers()
    version = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
    if controllers:
        report.good("cgroups", f"cgroup {version}: {' and '.join(controllers)} limits available")
    else:
        report.note(
            "cgroups",
            f"cgroup {version}: no writable memory or pids cgroup here, so sandboxes run "
            "without limits and memory_limit/pids_limit are refused",
        )
    criu = _check_criu(report, settings)
    if criu is not None and ready:
        _check_sandbox(report, settings)


def _check_kernel(report: _Report) -> bool:
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            config = f.read()
    except OSError:
        report.note("kernel cfg", "/proc/config.gz is absent; the sandbox test below decides")
        return True
    missing = [opt for opt in _KERNEL_OPTIONS if f"{opt}=y" not in config]
    if missing:
        report.bad(
            "kernel cfg",
            f"{', '.join(missing)} not set",
            "use a kernel built with them (most distribution kernels are)",
        )
        return False
    detail = ", ".join(_KERNEL_OPTIONS)
    present = [opt for opt in _KERNEL_EXTRAS if f"{opt}=y" in config]
    absent = [why for opt, why in _KERNEL_EXTRAS.items() if opt not in present]
    detail += "".join(f", {opt}" for opt in present)
    detail += f" ({'; '.join(absent)})" if absent else ""
    report.good("kernel cfg", detail)
    return True


def _check_criu(report: _Report, settings: Settings) -> Criu | None:
    try:
        criu = find_criu(settings)
    except CriuNotFoundError as exc:
        fix = "run scripts/provision-criu, or set TORPOR_CRIU=/path/to/criu (4.2 or newer)"
        configured = settings.criu or (settings.home / "criu/bin/criu").exists()
        if configured:  # the user chose a CRIU and it does not work: that is a failure
            report.bad("criu", exc.tried, fix)
        else:  # the replay road works without CRIU
            report.warn("criu", f"snapshot road unavailable: {exc.tried}", fix)
        return None
    report.good("criu", f"{criu.version} at {criu.path} (from {criu.source})")
    proc = subprocess.run(
        [criu.path, "check"], capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        lines = [
            line
            for line in (proc.stdout + proc.stderr).splitlines()
            if "RLIMIT_NOFILE" not in line and line.strip()
        ]
        report.bad(
            "criu check",
            lines[-1] if lines else f"exit status {proc.returncode}",
            "this CRIU does not support this kernel; set TORPOR_CRIU to a newer one",
        )
        return None
    report.good("criu check", "the kernel supports what CRIU needs")
    return criu


def _check_sandbox(report: _Report, settings: Settings) -> None:
    """Launch, checkpoint and restore a real sandbox holding a TCP connection: nothing less
    proves the road works."""
    scratch = Path(tempfile.mkdtemp(prefix="doctor-", dir=_mkdir(settings.home)))
    boxes: list[Sandbox] = []
    try:
        box = Sandbox.launch(["python3", "-c", _SMOKE], network=False, settings=settings)
        boxes.append(box)
        deadline = time.monotonic() + 30
        while "ready" not in box.stdout_path.read_text():
            if box.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the test process did not start: {box.stderr_path.read_text()}")
            time.sleep(0.01)
        checkpoint = box.checkpoint(scratch / "checkpoint")
        restored = Sandbox.restore(checkpoint, settings=settings)
        boxes.append(restored)
        if restored.poll() is not None:
            raise RuntimeError(f"the restored sandbox ended with status {restored.returncode}")
    except (TorporError, OSError, RuntimeError) as exc:
        report.bad(
            "sandbox",
            f"launch/checkpoint/restore test failed: {getattr(exc, 'message', exc)}",
            "see the message; scripts/provision-criu --check tests CRIU alone",
        )
        return
    finally:
        for b in boxes:
            b.teardown()
        shutil.rmtree(scratch, ignore_errors=True)
    report.good(
        "sandbox",
        f"launch {box.timings['launch'] * 1000:.0f} ms, "
        f"checkpoint {checkpoint.total_seconds * 1000:.0f} ms "
        f"({checkpoint.image_bytes / 2**20:.1f} MiB), "
        f"restore {restored.timings['restore'] * 1000:.0f} ms, of a process holding a TCP "
        "connection",
    )


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# CRIU caches what it learnt of the kernel in /run/criu.kdat, only when /run is a tmpfs,
# writing it through this file opened with O_EXCL: a criu killed while writing it leaves it
# behind, and no criu can write the cache again until it is removed.
_KDAT_TMP = Path("/run/criu.kdat.tmp")


def _check_criu_cache(report: _Report, cleanup: bool) -> None:
    if fstype(str(_KDAT_TMP.parent)) != "tmpfs":
        report.note(
            "criu cache",
            f"{_KDAT_TMP.parent} is not a tmpfs, so CRIU keeps no cache of the kernel's "
            "features there; lazy restores run criu with a /run of its own on a tmpfs "
            "(/dev/shm/torpor-criu-run) to keep one",
        )
        return
    try:
        age = time.time() - _KDAT_TMP.stat().st_mtime
    except OSError:
        return  # no leftover: nothing to say
    if age < 60:
        return  # a criu may be writing it right now
    what = (
        f"{_KDAT_TMP} is left over from a criu killed {age / 60:.0f} min ago: CRIU cannot "
        "cache the kernel's features and probes them again on every call"
    )
    if not cleanup:
        report.warn("criu cache", what, "torpor doctor --cleanup (removes that file)")
        return
    try:
        _KDAT_TMP.unlink()
    except OSError as exc:
        report.bad("criu cache", f"{what}; removing it failed: {exc}", f"rm {_KDAT_TMP}")
        return
    report.good("criu cache", f"removed the stale {_KDAT_TMP}; CRIU caches again")


def _check_orphans(report: _Report, settings: Settings, cleanup: bool) -> None:
    orphans = find_orphans(settings)
    if not orphans:
        report.good("sandboxes", "no orphaned sandboxes")
        return
    listing = ", ".join(
        f"{o.sandbox_id} ({'running, ' if o.running_pid else ''}{o.mounts} mounts)" for o in orphans
    )
    if not cleanup:
        report.bad(
            "sandboxes",
            f"{len(orphans)} orphaned (their owner process is gone): {listing}",
            "torpor doctor --cleanup",
        )
        return
    try:
        remove_orphans(orphans)
    except TorporError as exc:
        report.bad("sandboxes", exc.message, "see the message")
        return
    report.good("sandboxes", f"removed {len(orphans)} orphaned: {listing}")
