"""Workflows that `bench/throughput.py` enqueues for `torpor worker` processes."""

from __future__ import annotations

import time

import torpor


@torpor.step()
def trivial(n: int) -> int:
    return n


@torpor.workflow()
def steps(count: int) -> int:
    """``count`` journaled steps that do nothing: what remains is torpor and the database."""
    return sum(trivial(n) for n in range(count))


@torpor.step()
def pause(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@torpor.workflow()
def slow(count: int, seconds: float) -> int:
    """A long run, for the takeover measurement: a step every ``seconds``."""
    return len([pause(seconds) for _ in range(count)])
