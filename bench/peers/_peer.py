"""Shared by the peer scripts: arguments, timing summaries and the one-JSON-object output.

The peers run in their own virtualenv (.bench-venv), so this imports nothing from torpor.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


Decorator = Callable[[Callable[[int], int]], Callable[[int], int]]


def steps_workflow(
    step: Decorator, workflow: Decorator, body: Callable[[int], int] = lambda i: i + 1
) -> Callable[[int], int]:
    """The workflow every system runs, made with that system's step and workflow
    decorators: ``n`` steps in a row, each ``body`` of the previous one's result (the first
    of 0). The decorators register the functions, so call this once per process."""

    @step
    def one_step(i: int) -> int:
        return body(i)

    @workflow
    def steps(n: int) -> int:
        x = 0
        for _ in range(n):
            x = one_step(x)
        return x

    return steps


def make_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every peer takes; a script adds its own before parsing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--url", help="PostgreSQL URL (backend postgres); ignored for sqlite")
    parser.add_argument("--steps", type=int, default=1000, help="steps in the one long workflow")
    parser.add_argument("--workflows", type=int, default=1000, help="two-step workflows in a row")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--dir", help="where SQLite files go (default: a new temporary directory, removed after)"
    )
    # Both default to the setting torpor is compared at: WAL, and an fsync per commit.
    parser.add_argument("--journal-mode", default="wal", help="SQLite journal_mode")
    parser.add_argument("--synchronous", default="full", help="SQLite synchronous")
    return parser


@dataclass
class Result:
    """The one JSON object a peer script prints; lists hold one value per repetition."""

    peer: str
    variant: str
    backend: str
    steps: int
    workflows: int
    repeat: int
    version: dict[str, str] = field(default_factory=dict)
    durability: str = ""
    workflow_seconds: list[float] = field(default_factory=list)
    empty_workflow_seconds: list[float] = field(default_factory=list)
    per_step_us: list[float] = field(default_factory=list)
    steps_per_second: list[float] = field(default_factory=list)
    workflows_seconds: list[float] = field(default_factory=list)
    workflows_per_second: list[float] = field(default_factory=list)
    median: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def add_long(self, seconds: float, empty_seconds: float) -> None:
        self.workflow_seconds.append(seconds)
        self.empty_workflow_seconds.append(empty_seconds)
        self.per_step_us.append((seconds - empty_seconds) / self.steps * 1e6)
        self.steps_per_second.append(self.steps / seconds)

    def add_many(self, seconds: float) -> None:
        self.workflows_seconds.append(seconds)
        self.workflows_per_second.append(self.workflows / seconds)

    def finish(self) -> None:
        for name in ("per_step_us", "steps_per_second", "workflows_per_second"):
            values: list[float] = getattr(self, name)
            if values:
                self.median[name] = statistics.median(values)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], times: int) -> float:
    """Median of several runs: an empty workflow takes milliseconds, so one run is noise."""
    return statistics.median(timed(fn) for _ in range(times))


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[TextIO]:
    """Keep stdout for the JSON object alone, whatever the peer library prints; yields it."""
    real = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        yield real


def emit(result: Result, out: TextIO) -> int:
    """Print the object; the exit status is 1 for an error row, which is still printed."""
    result.finish()
    out.write(json.dumps(asdict(result)) + "\n")
    out.flush()
    return 0 if result.error is None else 1


def main(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    peer: str,
    variant: str | Callable[[argparse.Namespace], str],
    measure: Callable[[Result, Any, Path], None],
) -> int:
    """A peer script's main: parse, measure in a temporary folder (under --dir), print the
    row; ``variant`` may depend on the arguments. ``measure(result, args, workdir)``."""
    args = parser.parse_args(argv)
    result = Result(
        peer=peer,
        variant=variant if isinstance(variant, str) else variant(args),
        backend=args.backend,
        steps=args.steps,
        workflows=args.workflows,
        repeat=args.repeat,
    )
    with tempfile.TemporaryDirectory(prefix=f"{peer}-bench-", dir=args.dir) as workdir:
        return run(result, lambda r: measure(r, args, Path(workdir)))


def run(result: Result, body: Callable[[Result], Any]) -> int:
    """Run the measurements; any failure becomes the row's error rather than a lost row."""
    with stdout_to_stderr() as out:
        try:
            body(result)
        except BaseException as exc:  # an error row is the contract, even on Ctrl-C
            traceback.print_exc(file=sys.stderr)
            result.error = f"{type(exc).__name__}: {exc}".strip()
        return emit(result, out)


def measure(result: Result, args: Any, call: Callable[[int], int], label: str) -> None:
    """The same timed loop for every peer: warm up, then per repetition an empty workflow
    (median of 11), one of ``--steps`` steps, and ``--workflows`` two-step workflows.
    ``call(n)`` runs a workflow of n steps to its result, which must be n."""
    for _ in range(20):
        call(2)
    assert call(50) == 50
    for rep in range(args.repeat):
        empty = median_time(lambda: call(0), 11)
        long = timed(lambda: call(args.steps))
        result.add_long(long, empty)
        many = timed(lambda: [call(2) for _ in range(args.workflows)])
        result.add_many(many)
        progress(
            f"  {label} rep {rep + 1}: {args.steps} steps {long:.3f}s (empty "
            f"{empty * 1e3:.2f} ms, {result.per_step_us[-1]:.0f} us/step); {args.workflows} "
            f"workflows {many:.3f}s ({result.workflows_per_second[-1]:.0f}/s)"
        )
