"""Processes as the host's ``/proc`` shows them: the one reader of ``/proc/PID/stat``.

A pid alone is reused; a pid with its start time names one process for good, so sandboxes,
snapshot-store markers and workers record both and ask `alive` later. (The sandbox's init,
`_init.py`, reads its own start time without this module: it runs without torpor importable.)
"""

from __future__ import annotations

import os
import signal
import time

__all__ = ["alive", "kill_tree", "process_start_time", "process_state"]


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: it ends at the last ')'.
    return text[text.rindex(")") + 2 :].split()


def process_state(pid: int) -> str:
    """The process's state letter (``R``, ``S``, ``T`` stopped, ``Z`` zombie, ...); ``?``
    when it cannot be read (the process is gone)."""
    fields = _stat_fields(pid)
    return fields[0] if fields else "?"


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks; None once it has exited (a zombie too)."""
    fields = _stat_fields(pid)
    if not fields or fields[0] in ("Z", "X"):  # exited; only its exit status is left
        return None
    return int(fields[19])


def alive(pid: int | None, started: int | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs."""
    return pid is not None and started is not None and process_start_time(pid) == started


def kill_tree(pid: int, started: int | None, timeout: float = 10.0) -> None:
    """SIGKILL a sandbox's init (its whole pid namespace dies with it) and wait until gone.

    A pid-namespace init ignores SIGTERM from outside, so SIGKILL it is.
    """
    if not alive(pid, started):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid, started) and time.monotonic() < deadline:
        time.sleep(0.005)
