"""Five steps, each appending a line to a file; a test crashes the worker between or inside
them (TORPOR_TEST_HANG=before:N or inside:N makes step N signal the test and hang)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torpor


def _hang_here(where: str, n: int) -> None:
    if os.environ.get("TORPOR_TEST_HANG") == f"{where}:{n}":
        Path(os.environ["TORPOR_TEST_READY"]).write_text(f"{where}:{n}")
        time.sleep(3600)


@torpor.step()
def write_line(path: str, n: int) -> str:
    _hang_here("before", n)
    key = torpor.idempotency_key()
    with open(path + ".keys", "a") as keys:
        keys.write(f"{n} {key}\n")
    lines = Path(path).read_text().splitlines() if Path(path).exists() else []
    if not any(line.endswith(key) for line in lines):  # exactly-once by idempotency key
        with open(path, "a") as f:
            f.write(f"step {n} {key}\n")
            f.flush()
            os.fsync(f.fileno())
    _hang_here("inside", n)
    return f"line {n}"


@torpor.workflow()
def five_steps(path: str) -> list[str]:
    return [write_line(path, n) for n in range(1, 6)]
