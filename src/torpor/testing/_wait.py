"""Waiting for a condition that another process or thread makes true."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    what: str = "the condition",
    *,
    timeout: float = 60.0,
    interval: float = 0.05,
    explain: Callable[[], str] | None = None,
) -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    Args:
        condition: asked every ``interval`` seconds, and once more at the deadline.
        what: what is waited for, for the message on timeout ("the run to suspend").
        timeout: seconds to wait at the most.
        interval: seconds between two calls.
        explain: called on timeout; its text is added to the message (the state that was
            waited on, say).

    Returns:
        The first truthy value ``condition`` returned.

    Raises:
        TimeoutError: ``condition`` stayed falsy for ``timeout`` seconds.

    Example:
        done = wait_until(lambda: (r := store.get_run(run_id)).status.terminal and r,
                          "the run to end", timeout=120)
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    detail = f": {explain()}" if explain is not None else ""
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{detail}")
