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


@torpor.step()
def note(i: int, said: str) -> str:
    time.sleep(0.5)  # the window the crash tests aim at
    with open("/workspace/notes.txt", "a") as f:
        f.write(f"{i} {said}\n")
    return f"{i}:{said}"


@torpor.workflow()
def ten_steps(base_url: str, tag: str) -> dict:
    """Ten model calls and ten steps, with state in memory, in a file held open by the
    workflow itself and in files its steps write."""
    from torpor import Agent

    seen = []  # memory only
    turns = open("/workspace/turns.txt", "a")  # noqa: SIM115 - held open across checkpoints
    for i in range(10):
        said = Agent("openai:scripted", base_url=base_url, max_turns=1).run(f"{tag} {i}")
        seen.append(said)
        turns.write(f"{i} {said}\n")
        turns.flush()
        seen.append(note(i, said))
    turns.close()
    with open("/workspace/turns.txt") as f:
        turns_text = f.read()
    with open("/workspace/notes.txt") as f:
        notes_text = f.read()
    return {"seen": seen, "turns": turns_text, "notes": notes_text}


@torpor.step()
def fast_path() -> str:
    return "fast"


@torpor.step()
def slow_path() -> str:
    return "slow"


@torpor.workflow()
def diverger(flag: str) -> dict:
    """Takes the path a host file names: its memory comes from the snapshot, the file
    (shared with the sandbox) from the host of the moment."""
    torpor.checkpoint()
    with open(flag) as f:
        fast = f.read().strip() == "fast"
    took = fast_path() if fast else slow_path()
    slow_step(30.0 if fast else 0.0)  # the first time round, the worker is killed in here
    return {"took": took}


@torpor.workflow()
def mapped_library(path: str) -> str:
    """Keeps a shared library of the host mapped while it waits."""
    import ctypes

    ctypes.CDLL(path)
    return str(torpor.wait_for_event("go"))


@torpor.workflow()
def waiter() -> object:
    return torpor.wait_for_event("go")


@torpor.workflow()
def rollback_flow() -> dict:
    first = record(1)
    torpor.checkpoint()
    second = record(2)
    got = torpor.wait_for_event("go")
    with open("/workspace/steps.txt") as f:
        steps = f.read().split()
    return {"first": first, "second": second, "got": got, "steps": steps}
