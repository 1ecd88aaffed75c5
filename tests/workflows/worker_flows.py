"""Workflows for the multi-worker tests: steps whose bodies leave a trace outside the run.

A replay-road step body sleeps, then appends one line to a shared file naming the run, the
call position, the worker process and the attempt's fencing epoch, and returns the same
facts. The test compares the file (what bodies executed) with the log (what was recorded):
a body that executed without its result being recorded was cut off by a kill, a stop or a
lost lease.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torpor
from torpor.engine._context import current


def _epoch() -> int:
    ctx = current()
    return ctx.run.epoch if ctx is not None else 0


@torpor.step()
def work(path: str, index: int, n: int, seconds: float) -> dict[str, Any]:
    time.sleep(seconds)
    fact = {"run": index, "n": n, "pid": os.getpid(), "epoch": _epoch(), "t": time.time()}
    # One short O_APPEND write per line: lines of concurrent writers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        line = f"{index} {n} {fact['pid']} {fact['epoch']} {fact['t']:.6f}\n"
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return fact


@torpor.workflow()
def chaos(path: str, index: int, steps: int, seconds: float) -> list[int]:
    return [work(path, index, n, seconds)["n"] * index for n in range(1, steps + 1)]


@torpor.step()
def square(n: int, seconds: float) -> int:
    time.sleep(seconds)
    with open("/workspace/squares.txt", "a") as f:
        f.write(f"{n}\n")
    return n * n


@torpor.workflow()
def snap_chaos(index: int, steps: int, seconds: float) -> dict[str, Any]:
    squares = [square(n, seconds) for n in range(1, steps + 1)]
    with open("/workspace/squares.txt") as f:
        written = [int(x) for x in f.read().split()]
    return {"index": index, "squares": squares, "written": written}


@torpor.step()
def tick(label: str) -> str:
    return label


@torpor.workflow()
def wake_later(seconds: float) -> dict[str, Any]:
    started = tick("started")
    torpor.sleep(seconds)
    return {"started": started, "woke": tick("woke")}


@torpor.workflow()
def wait_event() -> dict[str, Any]:
    tick("asked")
    return {"answer": torpor.wait_for_event("answer", timeout=600)}


@torpor.step()
def quick(n: int) -> int:
    return n


@torpor.workflow()
def steps_only(steps: int) -> int:
    return sum(quick(n) for n in range(steps))
