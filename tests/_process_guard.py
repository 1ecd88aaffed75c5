"""A pytest plugin: a test's subprocesses must end with it.

A `Popen` left running or never waited for by one test is garbage-collected later, during
some other test, whose warnings-as-errors then turn `Popen.__del__`'s ResourceWarning into an
error in a test that did nothing wrong. Here the test that started the process fails instead,
naming it, and the process is killed and reaped so the tests after it are unaffected. A
process that ended but was never waited for is reaped quietly: it holds nothing.

Two kinds are tracked: every `subprocess.Popen` (whatever started it), and every child of
this process (forks that are no `Popen`, trees a sandbox reparented to it). Those that already
existed when the test began (the processes of session- and module-scoped fixtures, set up
before this function-scoped one) are not counted, nor those a longer-lived fixture started on
demand mid-test and declared with `outlives_tests` (the session's PostgreSQL, whose daemon
becomes this process's child once a sandbox made it a subreaper).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# A child that was just killed may need a moment to end.
_GRACE_SECONDS = 5.0

_declared: set[str] = set()
_popens: weakref.WeakSet[subprocess.Popen[Any]] = weakref.WeakSet()
_popen_init = subprocess.Popen.__init__


def _tracked_init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
    _popen_init(self, *args, **kwargs)
    _popens.add(self)


subprocess.Popen.__init__ = _tracked_init  # type: ignore[method-assign]


def outlives_tests(cmdline_part: str) -> None:
    """Declare the processes whose command line holds ``cmdline_part`` as a longer-lived
    fixture's: the guard leaves them alone."""
    _declared.add(cmdline_part)


def _command(pid: int) -> str | None:
    """The process's command line if it still runs (not a zombie), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if stat[stat.rindex(")") + 2] in "ZX":
        return None
    return cmdline.replace(b"\0", b" ").decode(errors="replace").strip()


def running_children() -> dict[int, str]:
    """This process's children (of every thread) that still run, with their command lines."""
    found: dict[int, str] = {}
    for task in os.listdir("/proc/self/task"):
        try:
            pids = Path(f"/proc/self/task/{task}/children").read_text().split()
        except OSError:
            continue
        for pid in map(int, pids):
            command = _command(pid)
            if command is not None and not any(part in command for part in _declared):
                found[pid] = command
    return found


def _leftovers(
    children_before: set[int], popens_before: list[subprocess.Popen[Any]]
) -> tuple[dict[int, str], list[subprocess.Popen[Any]]]:
    popens = [
        p for p in list(_popens) if not any(p is q for q in popens_before) and p.poll() is None
    ]
    children = {p: c for p, c in running_children().items() if p not in children_before}
    return children, popens


@pytest.fixture(autouse=True)
def _subprocesses_end_with_their_test() -> Iterator[None]:
    children_before = set(running_children())
    popens_before = list(_popens)
    yield
    gc.collect()  # a Popen this test dropped is judged here, not in a later test
    deadline = time.monotonic() + _GRACE_SECONDS
    while any(left := _leftovers(children_before, popens_before)) and (time.monotonic() < deadline):
        time.sleep(0.02)
    children, popens = left
    named = dict(children)
    for proc in popens:
        named[proc.pid] = _command(proc.pid) or str(proc.args)
        proc.kill()
        proc.wait()
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    if named:
        listed = "; ".join(f"pid {pid}: {cmd}" for pid, cmd in sorted(named.items()))
        pytest.fail(f"subprocesses outlived the test (now killed): {listed}", pytrace=False)
