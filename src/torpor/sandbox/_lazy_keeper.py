"""The keeper of a lazy restore's userfaultfds, run as ``python -I -S _lazy_keeper.py ...``.

Why it exists: the kernel serves a page that a userfaultfd never filled as *zeros* once the
last descriptor of that userfaultfd is closed. If `criu lazy-pages` died (killed, out of
memory, its page source gone) while pages were still missing, the restored processes would
run on with zeroed memory. This keeper takes its own copies of the daemon's userfaultfds
(``pidfd_getfd``) while the restored tree is still stopped, so a missing page can only ever
make a process wait, never read zeros; and it SIGKILLs the tree when nobody is left to vouch
for the transfer: when the worker (the process that restored the tree) is gone before it
created ``STATE/done``. The worker creates that file once the daemon exited with status 0,
and kills the tree itself when the daemon fails.

It starts beside the daemon, before the restore, so that its start-up costs the restore
nothing. CRIU's post-restore action (a shell script) then writes the restored init's pid to
the fifo ``STATE/grab``; the keeper takes the descriptors and answers ``ok`` on the fifo
``STATE/grabbed``; only then does CRIU resume the tree.

Arguments: DAEMON_PID EXPECTED_UFFDS WORKER_PID STATE. Standard library only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import sys
import time

_SYS_PIDFD_GETFD = 438  # the same number on every architecture
_TIMEOUT = 10.0


def _uffds(pid: int) -> list[int]:
    found = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}") == "anon_inode:[userfaultfd]":
                found.append(int(name))
        except OSError:
            continue
    return found


def _log(state: str, message: str) -> None:
    with open(os.path.join(state, "keeper.log"), "a") as f:
        f.write(message + "\n")


def _wait_for_init(request: int, daemon_fd: int, worker_fd: int) -> int | None:
    """The restored init's pid, once CRIU's action writes it; None if the daemon or the
    worker ended first (the restore then fails by itself)."""
    text = b""
    while not text.endswith(b"\n"):
        ready = select.select([request, daemon_fd, worker_fd], [], [])[0]
        if daemon_fd in ready or worker_fd in ready:
            return None
        part = os.read(request, 64)
        if not part:
            time.sleep(0.001)  # the writer came and went without a full line: wait again
        text += part
    return int(text)


def _grab(daemon: int, daemon_fd: int, expected: int) -> list[int]:
    libc = ctypes.CDLL(None, use_errno=True)
    deadline = time.monotonic() + _TIMEOUT
    # The restore sent every process's userfaultfd before its post-restore action; the
    # daemon may still be reading them off its socket.
    while len(fds := _uffds(daemon)) < expected:
        if time.monotonic() > deadline:
            raise OSError(f"the daemon holds {len(fds)} of {expected} userfaultfds")
        time.sleep(0.0005)
    kept = []
    for fd in fds:
        dup = libc.syscall(_SYS_PIDFD_GETFD, daemon_fd, fd, 0)
        if dup < 0:
            raise OSError(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
        kept.append(dup)
    return kept


def _answer(path: str, text: bytes) -> None:
    deadline = time.monotonic() + _TIMEOUT
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: the action has not opened its end yet
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.0005)
            continue
        try:
            os.write(fd, text)
        finally:
            os.close(fd)
        return


def main() -> int:
    daemon, expected, worker = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    state = sys.argv[4]
    daemon_fd = os.pidfd_open(daemon)
    worker_fd = os.pidfd_open(worker)
    request = os.open(os.path.join(state, "grab"), os.O_RDONLY | os.O_NONBLOCK)
    init = _wait_for_init(request, daemon_fd, worker_fd)
    if init is None:
        return 0
    try:
        init_fd = os.pidfd_open(init)
        kept = _grab(daemon, daemon_fd, expected)
    except OSError as exc:
        _log(state, f"cannot keep the userfaultfds: {exc}")
        _answer(os.path.join(state, "grabbed"), b"no\n")  # CRIU aborts and kills the tree
        return 1
    _answer(os.path.join(state, "grabbed"), b"ok\n")
    done = os.path.join(state, "done")
    while not os.path.exists(done):
        ready = select.select([init_fd, worker_fd], [], [], 0.05)[0]
        if init_fd in ready:
            return 0  # the tree is gone: nothing left to protect
        if worker_fd in ready and not os.path.exists(done):
            # Nobody can finish the transfer or vouch for it any more.
            signal.pidfd_send_signal(init_fd, signal.SIGKILL)
            _log(state, f"the worker {worker} died before the pages were all in: tree killed")
            return 0
    del kept  # closed at exit: every page is in
    return 0


if __name__ == "__main__":
    sys.exit(main())
