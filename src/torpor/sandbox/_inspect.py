"""What CRIU cannot checkpoint, found before asking it to.

A failed ``criu dump`` freezes the tree, gives up and thaws it: harmless, but its log names a
host pid and an internal error. Reading ``/proc`` first costs about a millisecond for a small
tree and gives an answer a person can act on: which process (pid inside the sandbox, command
name), which resource, and what to change. The inspection runs while the tree runs, so it can
miss what appears between it and the dump; `blocker_from_log` then reads CRIU's log.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import stat
import struct
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .._errors import SandboxError

__all__ = [
    "DEFAULT_GHOST_LIMIT",
    "CheckpointBlockedError",
    "blocker_from_log",
    "find_blockers",
    "tree_processes",
]

# CRIU keeps a deleted-but-open file's contents in the images only up to this size (its own
# default, 1 MiB); `criu dump --ghost-limit` raises it.
DEFAULT_GHOST_LIMIT = 1 << 20

# How many directory entries to look at when naming the directory an inotify watch is on.
_NAME_SEARCH_LIMIT = 20_000

_IO_URING_FIX = (
    "CRIU cannot checkpoint io_uring: close the ring before checkpointing, or run the "
    "program without io_uring (most runtimes can fall back to epoll)"
)
_INOTIFY_FIX = (
    "CRIU cannot checkpoint inotify watches on an overlay (the sandbox's root, its /tmp, the "
    "workspace of a restored sandbox): remove the watch (stop the file watcher) before "
    "checkpointing, or launch with a host workspace and watch only below /workspace"
)
_UNIX_FIX = (
    "a restored copy could not reconnect it: close the connection before checkpointing (and "
    "reconnect after), or run the peer inside the sandbox"
)


class CheckpointBlockedError(SandboxError):
    """A process in the sandbox holds something CRIU cannot checkpoint.

    Nothing was dumped, and the sandbox runs on as it was. ``pid`` is the process's pid inside
    the sandbox, ``command`` its name, ``resource`` what blocks, ``fix`` the way out; ``log``
    is CRIU's log when CRIU found the problem, else empty.
    """

    def __init__(
        self,
        sandbox_id: str,
        pid: int | None,
        command: str,
        resource: str,
        fix: str,
        log: str = "",
        others: tuple[str, ...] = (),
    ) -> None:
        who = f"process {pid} ({command})" if pid is not None else "a process"
        also = "".join(f"; also {other}" for other in others)
        where = f" (CRIU's log: {log})" if log else ""
        super().__init__(
            sandbox_id,
            f"cannot checkpoint: {who} holds {resource}{also}; nothing was dumped and the "
            f"sandbox runs on as it was{where}",
            fix,
        )
        self.pid = pid
        self.command = command
        self.resource = resource
        self.log = log
        self.others = others


@dataclass(frozen=True)
class _Process:
    host_pid: int
    pid: int  # inside the sandbox
    command: str


@dataclass(frozen=True)
class _Blocker:
    process: _Process
    resource: str
    fix: str

    def error(self, sandbox_id: str, others: list[_Blocker]) -> CheckpointBlockedError:
        p = self.process
        rest = tuple(
            f"process {o.process.pid} ({o.process.command}) holds {o.resource}" for o in others
        )
        return CheckpointBlockedError(
            sandbox_id, p.pid, p.command, self.resource, self.fix, others=rest
        )


def find_blockers(init_pid: int, ghost_limit: int) -> list[_Blocker]:
    """Everything in the tree under ``init_pid`` that would make ``criu dump`` fail."""
    found: list[_Blocker] = []
    sockets: dict[int, tuple[_Process, int]] = {}  # socket inode -> holder, fd
    mounts: dict[int, list[tuple[int, str, str]]] = {}  # by mount namespace
    for proc in _tree(init_pid):
        base = f"/proc/{proc.host_pid}"
        try:
            fds = os.listdir(f"{base}/fd")
        except OSError:  # it exited meanwhile: nothing of it will be dumped
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{base}/fd/{fd}")
            except OSError:
                continue
            if target == "anon_inode:[io_uring]":
                found.append(_Blocker(proc, f"an io_uring instance (fd {fd})", _IO_URING_FIX))
            elif target == "anon_inode:inotify":
                found += _inotify_blockers(proc, fd, mounts)
            elif target.startswith("socket:["):
                sockets[int(target[8:-1])] = (proc, int(fd))
            elif target.endswith(" (deleted)"):
                found += _ghost_blockers(
                    proc, f"{base}/fd/{fd}", target, f"open as fd {fd}", ghost_limit
                )
        found += _mapped_blockers(proc, ghost_limit)
    if sockets:
        found += _unix_blockers(init_pid, sockets)
    return found


def _tree(init_pid: int) -> Iterator[_Process]:
    todo = deque([init_pid])
    while todo:
        pid = todo.popleft()
        base = f"/proc/{pid}"
        try:
            status = Path(f"{base}/status").read_text()
            command = Path(f"{base}/comm").read_text().strip()
            for task in os.listdir(f"{base}/task"):
                todo += [int(c) for c in Path(f"{base}/task/{task}/children").read_text().split()]
        except OSError:
            continue
        nspid = re.search(r"^NSpid:\s*(.*)$", status, re.M)
        inner = int(nspid.group(1).split()[-1]) if nspid else pid
        yield _Process(pid, inner, command)


def _ghost_blockers(
    proc: _Process, handle: str, target: str, how: str, ghost_limit: int
) -> list[_Blocker]:
    path = target[: -len(" (deleted)")]
    if path.startswith(("/memfd:", "/SYSV", "/dev/zero")):  # CRIU dumps these its own way
        return []
    try:
        st = os.stat(handle)
    except OSError:
        return []
    if not stat.S_ISREG(st.st_mode) or st.st_nlink or st.st_size <= ghost_limit:
        return []
    mib = st.st_size / 2**20
    need = -(-st.st_size // 2**20)  # MiB, rounded up
    return [
        _Blocker(
            proc,
            f"the deleted file {path} ({mib:.1f} MiB, {how}), larger than CRIU keeps "
            f"({ghost_limit / 2**20:g} MiB)",
            f"close or truncate it before checkpointing, or pass ghost_limit={need} << 20 "
            "to checkpoint() to copy it into the images",
        )
    ]


def _mapped_blockers(proc: _Process, ghost_limit: int) -> list[_Blocker]:
    base = f"/proc/{proc.host_pid}"
    try:
        maps = Path(f"{base}/maps").read_text()
    except OSError:
        return []
    found: list[_Blocker] = []
    seen: set[str] = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5] in seen:
            continue
        target = fields[5]
        seen.add(target)
        if target == "anon_inode:[io_uring]":
            found.append(_Blocker(proc, "an io_uring instance (mapped)", _IO_URING_FIX))
        elif target.endswith(" (deleted)"):
            found += _ghost_blockers(
                proc, f"{base}/map_files/{fields[0]}", target, "mapped into memory", ghost_limit
            )
    return found


def _inotify_blockers(
    proc: _Process, fd: str, mounts: dict[int, list[tuple[int, str, str]]]
) -> list[_Blocker]:
    base = f"/proc/{proc.host_pid}"
    try:
        info = Path(f"{base}/fdinfo/{fd}").read_text()
        table = mounts.get(os.stat(f"{base}/ns/mnt").st_ino)
        if table is None:
            table = mounts[os.stat(f"{base}/ns/mnt").st_ino] = _mount_table(base)
    except OSError:
        return []
    found = []
    for match in re.finditer(r"^inotify wd:\S+ ino:([0-9a-f]+) sdev:([0-9a-f]+)", info, re.M):
        ino, sdev = int(match.group(1), 16), int(match.group(2), 16)
        dev = os.makedev(sdev >> 20, sdev & 0xFFFFF)  # the kernel's own encoding of dev_t
        for mount_dev, point, fstype in table:
            if mount_dev == dev and fstype == "overlay":
                path = _find_inode(base, point, ino) or f"a directory of the overlay at {point}"
                found.append(_Blocker(proc, f"an inotify watch on {path} (fd {fd})", _INOTIFY_FIX))
                break
    return found


def _mount_table(base: str) -> list[tuple[int, str, str]]:
    table = []
    for line in Path(f"{base}/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        major, minor = fields[2].split(":")
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        table.append((os.makedev(int(major), int(minor)), point, right.split()[0]))
    return table


def _find_inode(base: str, point: str, ino: int) -> str | None:
    """The path inside the sandbox of inode ``ino`` on the mount at ``point``, by a bounded
    breadth-first walk (watched directories are seldom deep)."""
    top = f"{base}/root{point.rstrip('/')}"
    try:
        dev = os.stat(top or "/").st_dev
    except OSError:
        return None
    todo = deque([top])
    seen = 0
    while todo and seen < _NAME_SEARCH_LIMIT:
        directory = todo.popleft()
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                seen += 1
                st = entry.stat(follow_symlinks=False)
                if st.st_dev != dev:  # another mount: its inodes are not this one's
                    continue
                if st.st_ino == ino:
                    return entry.path[len(f"{base}/root") :] or "/"
                if stat.S_ISDIR(st.st_mode):
                    todo.append(entry.path)
    return None


# -- unix sockets, through the kernel's sock_diag interface --------------------------------

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_UDIAG_SHOW_NAME, _UDIAG_SHOW_PEER, _UDIAG_SHOW_ICONS = 1, 4, 8
_UNIX_DIAG_NAME, _UNIX_DIAG_PEER, _UNIX_DIAG_ICONS = 0, 2, 3
_TCP_ESTABLISHED = 1
_CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class _UnixSocket:
    name: str | None
    peer: int  # inode of the peer; 0 while the peer waits unaccepted in a listener's queue
    state: int
    waiting: tuple[int, ...]  # a listener's unaccepted clients (their inodes)


def _unix_blockers(init_pid: int, held: dict[int, tuple[_Process, int]]) -> list[_Blocker]:
    try:
        inside = _unix_table_in(init_pid)
        here = os.stat("/proc/self/ns/net").st_ino
        same = os.stat(f"/proc/{init_pid}/ns/net").st_ino == here
        # A peer reached by its path may live in another network namespace (ours).
        everywhere = inside if same else {**_unix_table_in(None), **inside}
    except OSError:  # no sock_diag: CRIU's own check will have to do
        return []
    queued = {client: ino for ino, sk in everywhere.items() for client in sk.waiting}
    found = []
    for ino, (proc, fd) in sorted(held.items(), key=lambda item: item[1][0].pid):
        sk = inside.get(ino)
        if sk is None:
            continue
        if sk.peer:
            outside, peer = sk.peer not in held, everywhere.get(sk.peer)
        elif sk.state == _TCP_ESTABLISHED and ino in queued:  # not accepted yet
            outside, peer = queued[ino] not in held, everywhere.get(queued[ino])
        else:  # not connected, or its peer is gone
            continue
        if outside:
            to = f"{peer.name} " if peer is not None and peer.name else ""
            found.append(
                _Blocker(
                    proc, f"a unix socket (fd {fd}) connected to {to}outside the sandbox", _UNIX_FIX
                )
            )
    return found


def _unix_table_in(pid: int | None) -> dict[int, _UnixSocket]:
    """Unix sockets of a network namespace (``pid``'s, or ours), by inode."""
    if pid is None:
        return _unix_table(_diag_socket())
    # A socket belongs to the network namespace it was made in: make it in a thread that
    # joined the sandbox's namespace, and let that thread end.
    made: list[socket.socket | BaseException] = []

    def enter_and_open() -> None:
        try:
            fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET):
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            made.append(_diag_socket())
        except BaseException as exc:  # handed to the caller's thread
            made.append(exc)

    thread = threading.Thread(target=enter_and_open)
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return _unix_table(made[0])


def _diag_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)


def _unix_table(sock: socket.socket) -> dict[int, _UnixSocket]:
    table: dict[int, _UnixSocket] = {}
    show = _UDIAG_SHOW_NAME | _UDIAG_SHOW_PEER | _UDIAG_SHOW_ICONS
    # struct unix_diag_req: all states, all inodes, no cookie.
    request = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, show, ~0 & 0xFFFFFFFF,
                          ~0 & 0xFFFFFFFF)  # fmt: skip
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY,
                         _NLM_F_REQUEST_DUMP, 1, 0)  # fmt: skip
    with sock:
        sock.send(header + request)
        while data := sock.recv(1 << 16):
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == _NLMSG_DONE:
                    return table
                if kind == _NLMSG_ERROR or length < 16:
                    raise OSError("sock_diag refused the request")
                ino, sk = _parse_unix_diag(data[offset + 16 : offset + length])
                table[ino] = sk
                offset += (length + 3) & ~3
    return table


def _parse_unix_diag(msg: bytes) -> tuple[int, _UnixSocket]:
    _, _, state, _, ino = struct.unpack_from("=BBBBI", msg)
    name: str | None = None
    peer = 0
    waiting: tuple[int, ...] = ()
    offset = 16  # struct unix_diag_msg, then attributes
    while offset + 4 <= len(msg):
        length, kind = struct.unpack_from("=HH", msg, offset)
        if length < 4:
            break
        value = msg[offset + 4 : offset + length]
        if kind == _UNIX_DIAG_NAME:  # an abstract name starts with a NUL: shown as @name
            raw = b"@" + value[1:] if value[:1] == b"\0" else value.rstrip(b"\0")
            name = raw.decode(errors="replace")
        elif kind == _UNIX_DIAG_PEER:
            peer = struct.unpack_from("=I", value)[0]
        elif kind == _UNIX_DIAG_ICONS:
            waiting = struct.unpack_from(f"={len(value) // 4}I", value)
        offset += (length + 3) & ~3
    return ino, _UnixSocket(name, peer, state, waiting)


# -- CRIU's log, when the inspection missed it ----------------------------------------------

_LOG_PATTERNS: list[tuple[str, str, str]] = [
    (r"Can't dump ghost file (\S+) of (\d+) size", "ghost", ""),
    (
        r"send_fds failed \(-22\)",
        "an io_uring instance (or another descriptor that cannot be passed between processes)",
        _IO_URING_FIX,
    ),
    (
        r"fsnotify: .*Can't dump that handle",
        "an inotify watch on an overlay directory",
        _INOTIFY_FIX,
    ),
    (
        r"unix: .*(?:unresolved|External socket)",
        "a unix socket connected outside the sandbox",
        _UNIX_FIX,
    ),
]


def blocker_from_log(
    sandbox_id: str, log: Path, processes: dict[int, tuple[int, str]], ghost_limit: int
) -> CheckpointBlockedError | None:
    """A `CheckpointBlockedError` if CRIU's dump log shows a known blocker, else None.

    ``processes`` maps host pids to (pid inside, command), taken before the dump.
    """
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    for pattern, resource, fix in _LOG_PATTERNS:
        match = re.search(pattern, text)
        if match is None:
            continue
        if resource == "ghost":
            size = int(match.group(2))
            resource = (
                f"the deleted file {match.group(1)} ({size / 2**20:.1f} MiB), larger than "
                f"CRIU keeps ({ghost_limit / 2**20:g} MiB)"
            )
            fix = (
                "close or truncate it before checkpointing, or pass "
                f"ghost_limit={-(-size // 2**20)} << 20 to checkpoint()"
            )
        # CRIU names the process it was dumping when it failed by its host pid.
        failed = re.search(r"\(pid: (\d+)\) failed", text)
        dumping = re.findall(r"Dumping task \(pid: (\d+)", text[: match.start()])
        host_pid = int(failed.group(1)) if failed else int(dumping[-1]) if dumping else None
        inner, command = processes.get(host_pid or -1, (None, "?"))
        return CheckpointBlockedError(sandbox_id, inner, command, resource, fix, str(log))
    return None


def tree_processes(init_pid: int) -> dict[int, tuple[int, str]]:
    """Host pid -> (pid inside, command) for the tree under ``init_pid``."""
    return {p.host_pid: (p.pid, p.command) for p in _tree(init_pid)}
