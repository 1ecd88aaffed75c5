"""A process and its descendants, read from /proc: who they are and the memory they hold."""

from __future__ import annotations

from collections import deque
from pathlib import Path

__all__ = ["process_tree", "tree_rss_mb"]


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it that still exists, parents before children.

    Args:
        pid: the root of the tree.

    Returns:
        Their pids; empty if ``pid`` is gone.
    """
    found: list[int] = []
    todo = deque([pid])
    while todo:
        current = todo.popleft()
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue  # ended meanwhile: its children, if any, were reparented elsewhere
        found.append(current)
        for task in tasks:
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MiB.

    Args:
        pid: the root of the tree.

    Returns:
        The sum of their VmRSS; 0.0 if ``pid`` is gone.
    """
    kib = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        rss = [line for line in status.splitlines() if line.startswith("VmRSS:")]
        kib += sum(int(line.split()[1]) for line in rss)  # none for a zombie
    return kib / 1024
