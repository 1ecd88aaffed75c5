"""Workflows for the snapshot-road tests: state in memory, in open files, in the workspace."""

from __future__ import annotations

import time

import torpor


@torpor.step()
def record(n: int) -> int:
    with open("/workspace/steps.txt", "a") as f:
        f.write(f"{n}\n")
    return n


@torpor.workflow()
def memory_and_wait(n: int) -> dict:
    kept = [record(i) for i in range(n)]  # lives in this process's memory only
    log = open("/workspace/log.txt", "w")  # noqa: SIM115 - held open across the wait on purpose
    log.write("before\n")
    log.flush()
    got = torpor.wait_for_event("go")
    log.write("after\n")
    log.close()
    with open("/workspace/log.txt") as f:
        text = f.read()
    with open("/workspace/steps.txt") as f:
        steps = f.read().split()
    return {"kept": kept, "got": got, "file": text, "steps": steps}


@torpor.workflow()
def sleeper(seconds: float) -> float:
    started = time.time()  # deliberately not recorded: memory survives on this road
    torpor.sleep(seconds)
    return time.time() - started


@torpor.step()
def slow_step(seconds: float) -> int:
    with open("/workspace/slow.txt", "a") as f:
        f.write("start\n")
    time.sleep(seconds)
    with open("/workspace/slow.txt", "a") as f:
        f.write("end\n")
    with open("/workspace/slow.txt") as f:
        return len(f.read().split())


@torpor.workflow()
def long_step(seconds: float) -> int:
    return slow_step(seconds)
