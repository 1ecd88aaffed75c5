"""Tools for the agent tests; the crash test makes `slow_add` signal and hang once."""

from __future__ import annotations

import os
import time
from pathlib import Path


def add(a: int, b: int) -> int:
    """Add two whole numbers.

    Args:
        a: the first number.
        b: the second number.
    """
    return a + b


def boom(reason: str) -> str:
    """Always fails.

    Args:
        reason: why.
    """
    raise RuntimeError(f"boom: {reason}")


def slow_add(a: int, b: int) -> int:
    """Add, slowly; in the crash test the first worker is killed while this runs.

    Args:
        a: the first number.
        b: the second number.
    """
    ready = os.environ.get("TORPOR_TEST_READY")
    if ready and os.environ.get("TORPOR_TEST_HANG") == "slow_add":
        Path(ready).write_text("in slow_add")
        time.sleep(3600)
    with open(os.environ.get("TORPOR_TEST_CALLS", os.devnull), "a") as calls:
        calls.write(f"slow_add {a} {b}\n")
    return a + b
