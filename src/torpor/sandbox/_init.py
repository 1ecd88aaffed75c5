"""The sandbox's pid 1, run as a script: ``python -I -S _init.py CONFIG_JSON``.

`unshare --mount --pid --fork` starts this in fresh mount and pid namespaces, still seeing the
host's root. Stage one builds the sandbox's filesystem under the overlay root and pivots into
it; it then re-executes a small reaper from *inside* the new root, because a process whose
executable and libraries live on the detached host root cannot be checkpointed. The reaper
starts the command, reaps orphans (it is the namespace's init), and records the command's exit
status, then exits so that the kernel kills whatever is left in the namespace.

Before the reaper runs, the init confines the tree (`confine`): no capabilities at all,
``no_new_privs``, a seccomp filter (`seccomp_program`), an IPC namespace of its own, and
read-only ``/proc/sys`` and ``/proc/sysrq-trigger``. The tree keeps uid 0 (see
docs/sandbox.md, "What is confined", for why and what each protection stops).

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

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MNT_DETACH = 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

# Inside the sandbox: where its control files and output live (the host's `run/` directory).
RUN_DIR = "/run/torpor"

REAPER = r"""
import ctypes, os, sys
cwd, out, err, exit_file, ready_file, host_pid, host_start = sys.argv[1:8]
cmd = sys.argv[8:]
child = os.fork()
if child == 0:
    try:
        os.setsid()
        os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        os.dup2(os.open(out, flags, 0o644), 1)
        os.dup2(os.open(err, flags, 0o644), 2)
        os.closerange(3, 1 << 16)
        os.chdir(cwd)
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        os.write(2, ("torpor sandbox: cannot run %r: %s\n" % (cmd, exc)).encode())
    os._exit(127)
# Not dumpable: the command, of the same uid, may not open /proc/1/mem (nor ptrace this
# process, which the seccomp filter refuses anyway); CRIU holds CAP_SYS_PTRACE.
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE


def publish(path, text):
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with open(fd, "w") as f:
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


# --- Confinement -------------------------------------------------------------------------
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 24, 22, 2
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
CLONE_NEWIPC = 0x08000000

# Syscalls refused with EPERM, by architecture: those that reach past the sandbox (handles
# to any inode, mounts, namespaces, kernel keyrings, modules, BPF, other processes' memory,
# the clock, swap, reboot). Most need a capability the tree lacks anyway: the filter is the
# second wall.
DENIED = {
    "x86_64": {
        "open_by_handle_at": 304, "name_to_handle_at": 303, "mount": 165, "umount2": 166,
        "pivot_root": 155, "unshare": 272, "setns": 308, "bpf": 321, "keyctl": 250,
        "add_key": 248, "request_key": 249, "kexec_load": 246, "kexec_file_load": 320,
        "init_module": 175, "finit_module": 313, "delete_module": 176, "perf_event_open": 298,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "swapon": 167,
        "swapoff": 168, "reboot": 169, "userfaultfd": 323, "acct": 163, "quotactl": 179,
        "syslog": 103, "settimeofday": 164, "clock_settime": 227, "clock_adjtime": 305,
        "adjtimex": 159, "lookup_dcookie": 212, "iopl": 172, "ioperm": 173,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442,
    },
    "aarch64": {
        "open_by_handle_at": 265, "name_to_handle_at": 264, "mount": 40, "umount2": 39,
        "pivot_root": 41, "unshare": 97, "setns": 268, "bpf": 280, "keyctl": 219,
        "add_key": 217, "request_key": 218, "kexec_load": 104, "kexec_file_load": 294,
        "init_module": 105, "finit_module": 273, "delete_module": 106, "perf_event_open": 241,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "swapon": 224,
        "swapoff": 225, "reboot": 142, "userfaultfd": 282, "acct": 89, "quotactl": 60,
        "syslog": 116, "settimeofday": 170, "clock_settime": 112, "clock_adjtime": 266,
        "adjtimex": 171, "lookup_dcookie": 18,
        "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "mount_setattr": 442,
    },
}  # fmt: skip
# clone(2) is allowed, but not with a flag that makes a namespace; clone3(2) passes its flags
# in memory a filter cannot read, so it fails with ENOSYS and the C library falls back to
# clone(2) (as in Docker's default profile).
CLONE = {"x86_64": 56, "aarch64": 220}
CLONE3 = 435
CLONE_NAMESPACES = 0x7E020080  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET, NEWTIME
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000
EPERM, ENOSYS = 1, 38


def seccomp_program(machine: str) -> bytes:
    """The classic-BPF filter, as the kernel's array of ``struct sock_filter``.

    Checks ``seccomp_data.arch`` first: a syscall made through another ABI (i386 via
    ``int 0x80``) kills the process, since the numbers below would mean other calls there;
    x32 numbers (bit 30 set) are refused.
    """
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, JMP|JEQ|K, ...
    allow, kill = 0x7FFF0000, 0x80000000  # SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS
    eperm, enosys = 0x00050000 | EPERM, 0x00050000 | ENOSYS  # SECCOMP_RET_ERRNO | errno
    denied = sorted(DENIED[machine].values())
    n = len(denied)
    # Layout: 0 load arch; 1 arch?; 2 kill; 3 load nr; 4 x32?; 5 clone3?; 6.. denied?;
    # then clone?, load flags, namespaces?, allow, EPERM, ENOSYS. Jumps count from the next.
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, AUDIT_ARCH[machine]), (ret, 0, 0, kill), (ld, 0, 0, 0)]
    prog.append((jge, n + 5, 0, X32_SYSCALL_BIT))  # -> EPERM
    prog.append((jeq, n + 5, 0, CLONE3))  # -> ENOSYS
    prog += [(jeq, n - i + 3, 0, nr) for i, nr in enumerate(denied)]  # -> EPERM
    prog.append((jeq, 0, 2, CLONE[machine]))  # not clone: -> allow
    prog.append((ld, 0, 0, 16))  # args[0], low 32 bits (little-endian): the flags
    prog.append((jset, 1, 0, CLONE_NAMESPACES))  # -> EPERM
    prog += [(ret, 0, 0, allow), (ret, 0, 0, eperm), (ret, 0, 0, enosys)]
    return b"".join(struct.pack("HBBI", *insn) for insn in prog)


def confine(libc: ctypes.CDLL) -> None:
    """Drop what the sandbox must not hold, for this process and all it will start: a
    System V IPC namespace of its own (the host's shared memory belongs to uid 0 too), every
    capability (the bounding set emptied: uid 0 gets none back at exec), ``no_new_privs``
    (nor from set-uid files) and the seccomp filter. Run just before the reaper is executed;
    CRIU dumps and restores all of it with each process."""
    _check(libc.unshare(CLONE_NEWIPC), "unshare the IPC namespace")
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient caps")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
    program = seccomp_program(platform.machine())

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    fprog = SockFprog(len(program) // 8, program)
    _check(
        libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0),
        "install the seccomp filter",
    )


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
    # uid 0 without capabilities may still write the kernel's settings and the SysRq trigger
    # (their checks are the files' modes): both are read-only mounts.
    for path in ("/proc/sys", "/proc/sysrq-trigger"):
        if not os.path.exists(root + path):
            continue  # a kernel without SysRq
        _mount(libc, root + path, root + path, None, MS_BIND)
        _mount(libc, "none", root + path, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
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
    confine(libc)
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
