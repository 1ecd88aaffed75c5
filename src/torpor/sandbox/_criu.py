"""Finding a CRIU that works on this kernel, and running it with errors a person can act on."""

from __future__ import annotations

import functools
import os
import re
import shutil
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .._config import Settings
from .._errors import CriuError, CriuNotFoundError

__all__ = ["MIN_CRIU_VERSION", "Criu", "find_criu", "fstype"]

MIN_CRIU_VERSION = (4, 2)
_MIN_TEXT = ".".join(map(str, MIN_CRIU_VERSION))

# Substrings of CRIU's log that have a known cause, and what the user should do about it.
_HINTS: list[tuple[str, str]] = [
    (
        "unresolved",
        "a unix socket connects to a peer outside the sandbox; close it before checkpointing",
    ),
    ("io_uring", "io_uring cannot be checkpointed; stop using it in the sandbox"),
    ("inotify", "inotify watches on the overlay root cannot be checkpointed; drop them"),
    ("ghost", "a deleted file is still open and too large to keep; close or truncate it"),
    ("Can't get 1:16 opt", "this CRIU is too old for the kernel; use CRIU 4.2 or newer"),
    ("file locks", "a file lock is held in an unsupported way; release it first"),
    ("Can't lookup mount", "a file descriptor points outside the sandbox; close it"),
]


@dataclass(frozen=True)
class Criu:
    """A CRIU binary that reported a usable version; ``source`` says how it was found."""

    path: str
    version: str
    source: str

    def run(
        self,
        args: list[str],
        *,
        log: Path,
        sandbox_id: str,
        operation: str,
        timeout: float = 300,
        cached: bool = False,
    ) -> float:
        """Run ``criu ARGS -o LOG`` and return its wall time in seconds; ``cached``: with
        its kernel-feature cache (see `command`).

        Raises:
            CriuError: criu exited non-zero or timed out; the message quotes its log.
        """
        cmd = [*self.command(cached=cached), *args, "-o", str(log), "-v4"]
        started = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CriuError(
                sandbox_id,
                operation,
                f"no answer within {timeout:.0f} s",
                str(log),
                "see the log; a very large process may need a longer timeout",
            ) from None
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            errors = _log_errors(log)
            detail = (
                " | ".join(errors[:3]) or (proc.stderr.strip().splitlines() or ["no output"])[-1]
            )
            raise CriuError(sandbox_id, operation, detail, str(log), _fix_for(errors))
        return elapsed

    def command(self, *, cached: bool = False) -> list[str]:
        """The command that runs this criu. ``cached``: where the host's /run is not a tmpfs,
        CRIU keeps no cache of the kernel's features and probes them on every call (some
        40 ms for a lazy-pages daemon to be ready, see docs/sandbox.md); run it in a mount
        namespace of its own whose /run is a tmpfs directory kept across calls, so the cache
        lives there. Nothing else of /run is needed by the calls made with it."""
        cache = _kdat_dir() if cached else None
        if cache is None:
            return [self.path]
        script = 'mount --bind "$0" /run && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                str(cache), self.path]  # fmt: skip


@functools.cache
def _kdat_dir() -> Path | None:
    """/dev/shm/torpor-criu-run where /run is not a tmpfs and /dev/shm is (else None)."""
    if fstype("/run") == "tmpfs" or fstype("/dev/shm") != "tmpfs" or not shutil.which("unshare"):
        return None
    path = Path("/dev/shm/torpor-criu-run")
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()  # /dev/shm is world-writable: trust only our own private directory
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return None  # not ours, or others could have written a cache CRIU would trust
    return path


def fstype(mountpoint: str) -> str | None:
    """The type of the filesystem mounted at ``mountpoint`` (None if nothing is)."""
    try:
        with open("/proc/mounts") as mounts:
            found = [line.split()[2] for line in mounts if line.split()[1:2] == [mountpoint]]
    except OSError:
        return None
    return found[-1] if found else None


def _log_lines(log: Path) -> list[str]:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    # Every run here logs a harmless RLIMIT_NOFILE error; it would hide the real one.
    return [line for line in text.splitlines() if "RLIMIT_NOFILE" not in line]


def _log_errors(log: Path) -> list[str]:
    return [line.strip() for line in _log_lines(log) if "Error" in line or "FAIL" in line]


def _fix_for(errors: list[str]) -> str:
    text = "\n".join(errors)
    for needle, fix in _HINTS:
        if needle in text:
            return fix
    return "read the log for the first Error line"


# path -> (identity of the file, its version): asking `criu --version` costs 5-10 ms, paid on
# every checkpoint and restore otherwise. A replaced binary has another identity.
_versions: dict[str, tuple[tuple[int, int, int, int], str | None]] = {}


def _version_of(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    cached = _versions.get(path)
    if cached is not None and cached[0] == identity:
        return cached[1]
    version = _ask_version(path)
    _versions[path] = (identity, version)
    return version


def _ask_version(path: str) -> str | None:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^Version:\s*(\S+)", out, re.M)
    return match.group(1) if match else None


def _new_enough(version: str) -> bool:
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2])
    return parts >= MIN_CRIU_VERSION


def find_criu(settings: Settings | None = None) -> Criu:
    """The CRIU to use: ``TORPOR_CRIU``, else ``$TORPOR_HOME/criu/bin/criu``, else
    ``~/.torpor/criu/bin/criu``, else ``criu`` on PATH if it is 4.2 or newer.

    An explicitly named or provisioned CRIU that does not work is an error, not a reason to
    fall back: the user asked for that one.

    Raises:
        CriuNotFoundError: nothing usable was found; the message says what was tried.
    """
    environment = Settings.from_env()
    settings = settings or environment
    # Settings made in code for another home (tests, benchmarks) name no CRIU; the one the
    # environment names at the time of the search is still the machine's.
    explicit = settings.criu or environment.criu
    if explicit:
        return _checked(explicit, "TORPOR_CRIU")
    provisioned = settings.home / "criu" / "bin" / "criu"
    if os.access(provisioned, os.X_OK):
        return _checked(str(provisioned), "TORPOR_HOME")
    # scripts/setup provisions into the default home; a run with another TORPOR_HOME (a
    # test, a demo) still finds it there.
    default = Path.home() / ".torpor" / "criu" / "bin" / "criu"
    if default != provisioned and os.access(default, os.X_OK):
        return _checked(str(default), "~/.torpor")
    on_path = shutil.which("criu")
    if on_path is None:
        raise CriuNotFoundError(f"TORPOR_CRIU is unset, {provisioned} is absent, no criu on PATH")
    version = _version_of(on_path)
    if version is None or not _new_enough(version):
        raise CriuNotFoundError(
            f"TORPOR_CRIU is unset, {provisioned} is absent, and {on_path} is criu "
            f"{version or '(unknown version)'}, older than {_MIN_TEXT}"
        )
    return Criu(on_path, version, "PATH")


def _checked(path: str, source: str) -> Criu:
    version = _version_of(path)
    if version is None:
        raise CriuNotFoundError(f"{source} names {path}, which does not run as criu")
    if not _new_enough(version):
        raise CriuNotFoundError(f"{source} names {path}, criu {version}, older than {_MIN_TEXT}")
    return Criu(path, version, source)
