"""The sandbox's pid 1, run as a script: ``python -I -S _init.py CONFIG_JSON``.

`unshare --mount --pid --fork` starts this in fresh mount and pid namespaces, still seeing the
host's root. Stage one builds the sandbox's filesystem under the overlay root and pivots into
it; it then re-executes a small reaper from *inside* the new root, because a process whose
executable and libraries live on the detached host root cannot be checkpointed. The reaper
starts the command, reaps orphans (it is the namespace's init), and records the command's exit
status, then exits so that the kernel kills whatever is left in the namespace.

Only the standard library: this file runs without site-packages, and the reaper runs on the
sandbox's own Python, which may differ from the host's.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import platform
import socket
import struct
import sys
from typing import Any

MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND = 2, 4, 8, 4096
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

# Inside the sandbox: where its control files and output live (the host's `run/` directory).
RUN_DIR = "/run/torpor"

REAPER = r"""
import os, sys
cwd, out, err, exit_file, ready_file, host_pid, host_start = sys.argv[1:8]
cmd = sys.argv[8:]
child = os.fork()
if child == 0:
    os.setsid()
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    os.dup2(os.open(out, flags, 0o644), 1)
    os.dup2(os.open(err, flags, 0o644), 2)
    os.closerange(3, 1 << 16)
    try:
        os.chdir(cwd)
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        os.write(2, ("torpor sandbox: cannot run %r: %s\n" % (cmd, exc)).encode())
    os._exit(127)


def publish(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


# The launcher learns this process's host pid and start time from here, not from /proc: a
# command that ends at once takes the reaper with it before anyone outside could look.
publish(ready_file, "%s %s\n" % (host_pid, host_start))
while True:
    try:
        pid, status = os.wait()
    except InterruptedError:
        continue
    if pid == child:
        code = os.waitstatus_to_exitcode(status)
        publish(exit_file, "%d\n" % code)
        os._exit(code if code >= 0 else 128 - code)
"""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(
    libc: ctypes.CDLL, src: str, dst: str, fstype: str | None, flags: int, data: str = ""
) -> None:
    _check(
        libc.mount(
            src.encode(),
            dst.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {src} on {dst}",
    )


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))


def _bind(libc: ctypes.CDLL, src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    _mount(libc, src, dst, None, MS_BIND)


def _host_identity() -> tuple[str, str]:
    """This process's pid and start time as the host sees them. Only readable before the
    sandbox's own /proc replaces the host's: the host's /proc names processes by host pid."""
    pid = os.readlink("/proc/self")
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return pid, text[text.rindex(")") + 2 :].split()[19]


def main(config: dict[str, Any]) -> None:
    libc = _libc()
    host_pid, host_start = _host_identity()
    root = config["root"]
    os.setsid()  # CRIU refuses a tree whose session leader is outside its pid namespace
    for procs in config["cgroups"]:  # "0" is the writer itself; children inherit the group
        with open(procs, "w") as f:
            f.write("0")
    # pivot_root needs the new root to be a mount of its own in this namespace.
    _mount(libc, root, root, None, MS_BIND)
    # /dev and /tmp are directories of the root layer, made by the launcher: no tmpfs for
    # CRIU to archive on every dump.
    _mount(libc, "proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _bind(libc, config["workspace"], root + "/workspace")
    _bind(libc, config["run_dir"], root + RUN_DIR)
    if not config["network"]:
        _loopback_up()
    os.chdir(root)
    _check(libc.syscall(SYS_PIVOT_ROOT[platform.machine()], b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "detach the host root")
    os.chdir("/")
    # From here on every open file must live inside the sandbox, or the dump fails.
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    log = os.open(RUN_DIR + "/init.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.closerange(3, 1 << 16)
    python = config["python"]
    os.execve(
        python,
        [
            python,
            "-I",
            "-S",
            "-c",
            REAPER,
            "/workspace",
            RUN_DIR + "/stdout.log",
            RUN_DIR + "/stderr.log",
            RUN_DIR + "/exit",
            RUN_DIR + "/ready",
            host_pid,
            host_start,
            *config["cmd"],
        ],
        config["env"],
    )


if __name__ == "__main__":
    try:
        main(json.loads(sys.argv[1]))
    except Exception as exc:  # the launcher shows init.log; a traceback there helps nobody
        sys.stderr.write(f"torpor sandbox init: {exc}\n")
        sys.exit(125)
