"""A sandbox dies with its worker: a small watcher process per sandbox, outside its tree.

The process that launched or restored a sandbox (the worker) supervises it: it checkpoints it,
relays its gateway calls, and stops it when the run ends. If the worker dies (SIGKILL, the OOM
killer, a host crash of the worker alone), nothing may run on unsupervised: a tool call that
nobody records, a model paid for twice once the next worker restores the last checkpoint.

So each sandbox gets a watcher, run as a script: ``python -I -S _watch.py PIDFD PID [tree]``.
Its stdin is the read end of a pipe whose only write end the worker holds (non-inheritable, so
no other child of the worker keeps it open); fd ``PIDFD`` is a pidfd of process ``PID``, taken
by the worker while it knew the process was its own (a pid may be reused; a pidfd names one
process for good). The watcher waits on both:

- EOF on stdin: the worker is gone (or tore the sandbox down), so it sends SIGKILL through the
  pidfd. A pid namespace's init killed from outside takes every process of the namespace
  with it, at once.
- the pidfd readable: the sandbox ended by itself (or was checkpointed), so it just exits.

A restored sandbox is watched through its init. A launched one is watched from the moment its
launcher (``unshare``, the worker's child, whose child becomes the init) exists, before the
init does: then PID is the launcher and ``tree`` says to kill its children first. The
launcher is stopped (SIGSTOP: it cannot fork any more, and a child that ends stays a zombie,
so no pid is reused), its children are killed, then itself. No moment of the launch is
unwatched. A restore is watched from when CRIU returns: the restored tree has run for
the milliseconds CRIU takes to exit.

Why not ``PR_SET_PDEATHSIG`` on the init: it fires when the parent *thread* ends, and workers
launch sandboxes from worker threads; a restored init's parent is CRIU's, not the worker. The
watcher lives in its own session (a Ctrl-C at the worker's terminal does not end it early) and
holds nothing of the sandbox's tree, so it never blocks a CRIU dump.

The module is also imported by the launcher (`Watch`): only the standard library, at the top.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["Watch"]

_SCRIPT = Path(__file__)


class Watch:
    """The worker's end of one sandbox's watcher: `start` it once the init runs, `stop` it
    once the sandbox has ended or is torn down (the watcher then sends its SIGKILL to a tree
    that is gone already, and exits)."""

    def __init__(self, process: subprocess.Popen[bytes], write_end: int) -> None:
        self._process = process
        self._write_end: int | None = write_end
        self._lock = threading.Lock()  # poll() may run in several threads at once

    @classmethod
    def start(cls, pid: int, started: int | None, log: Path, tree: bool = False) -> Watch | None:
        """Watch the process ``pid`` (which started at ``started``, in clock ticks); with
        ``tree``, a launcher whose children are to be killed with it.

        Returns None if it is already gone: there is nothing left to stop.

        Raises:
            OSError: no pidfd (a kernel older than 5.3) or the watcher could not start.
        """
        from ._proc import alive  # here: the watcher itself runs without torpor importable

        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # ended (and reaped) already
            return None
        try:
            # The pid was the init's when the launcher learnt it; the pidfd is of whatever has
            # that pid now. Still alive with the same start time: the same process.
            if not alive(pid, started):
                return None
            read_end, write_end = os.pipe()  # both non-inheritable
            try:
                with open(log, "ab") as err:
                    process = subprocess.Popen(
                        [sys.executable, "-I", "-S", str(_SCRIPT), str(pidfd), str(pid)]
                        + (["tree"] if tree else []),
                        stdin=read_end,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        pass_fds=(pidfd,),
                        close_fds=True,
                        start_new_session=True,
                    )
            except BaseException:
                os.close(write_end)
                raise
            finally:
                os.close(read_end)
        finally:
            os.close(pidfd)
        return cls(process, write_end)

    @property
    def pid(self) -> int:
        return self._process.pid

    def stop(self, timeout: float = 5.0) -> None:
        """Close the worker's end (the watcher then kills what is left of the sandbox, if
        anything, and exits) and reap the watcher. Safe to call twice."""
        with self._lock:  # an fd closed twice could be another file's by then
            if self._write_end is not None:
                os.close(self._write_end)
                self._write_end = None
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _watch(pidfd: int, pid: int, tree: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only EOF or the sandbox's end stop it
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        readable, _, _ = select.select([0, pidfd], [], [])
        if pidfd in readable:  # the sandbox ended on its own: nothing to do
            return
        if os.read(0, 4096):  # nobody writes; data would be no reason to kill
            continue
        break
    # EOF: the worker is gone or let go.
    with contextlib.suppress(ProcessLookupError):
        if tree:
            signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
            _kill_children(pid)
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...), or []."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return []
    return text[text.rindex(")") + 2 :].split()


def _kill_children(pid: int) -> None:
    """SIGKILL the children of the stopped process ``pid`` (a launcher that was stopped
    cannot fork, and cannot reap: the pids read here stay theirs)."""
    deadline = time.monotonic() + 1.0
    while (_stat(pid) or ["?"])[0] not in "tTZX?" and time.monotonic() < deadline:
        time.sleep(0.001)
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
    for child in children:
        try:
            child_fd = os.pidfd_open(child)
        except OSError:
            continue
        try:
            fields = _stat(child)
            if len(fields) > 1 and fields[1] == str(pid):  # still the launcher's child
                signal.pidfd_send_signal(child_fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.close(child_fd)


if __name__ == "__main__":
    _watch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["tree"])
