"""One side of a SIGKILL recovery trial: a workflow of trivial steps killed after N, resumed.

Run by bench/recovery_steps.py, with torpor's .venv for --system torpor and with .bench-venv's
Python for dbos and temporal. Every system runs the same workflow: --total steps, each
returning its argument plus one.

--phase run: start the workflow in this process (torpor: `torpor.start`, the embedded
  worker; DBOS: the decorated workflow called directly; Temporal: an SDK worker with the
  steps as local activities) and, when step --crash-at + 1 begins, print ``at N`` and block,
  leaving N steps recorded. The driver then SIGKILLs this process group.
--phase recover: a new process does what a restarted service does (torpor: a `Worker`
  claims the run; DBOS: `DBOS.launch()` recovers its pending workflows; Temporal: a new SDK
  worker picks the workflow task up and replays the history) and prints one JSON object of
  wall-clock timestamps (time.time()): process start, imports done, launch, the first step
  body executed in this process (the first step past the crash point: recorded steps are
  answered from the history, not executed) and the workflow's result.
--phase server (temporal): run `temporal server start-dev` until killed, printing its address.
"""

from __future__ import annotations

import time

T_PROCESS = time.time()  # before the imports: they are part of a restart

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

import _peer  # noqa: E402

WORKFLOW_ID = "bench-recovery"
CRASH_AT = int(os.environ.get("BENCH_CRASH_AT", "-1"))  # set in the run phase only
marks: dict[str, float] = {"process": T_PROCESS}


def _step_body(i: int) -> int:
    if i == CRASH_AT:  # the step after the N recorded ones
        print(f"at {CRASH_AT}", file=sys.__stdout__, flush=True)
        time.sleep(1e6)
    marks.setdefault("first_new_step", time.time())
    return i + 1


def _blocked() -> NoReturn:
    """After the run phase's start: the workflow should have blocked at the crash point."""
    raise RuntimeError("the run phase finished instead of blocking")


def _done(result: object, args: argparse.Namespace) -> None:
    """The recover phase has the workflow's result: when, and that it is right."""
    marks["done"] = time.time()
    if result != args.total:
        raise RuntimeError(f"recovered workflow returned {result}, not {args.total}")


def _emit(out: dict[str, Any]) -> None:
    sys.__stdout__.write(json.dumps(out) + "\n")  # type: ignore[union-attr]
    sys.__stdout__.flush()  # type: ignore[union-attr]


# -- torpor --------------------------------------------------------------------------------


def _torpor(args: argparse.Namespace) -> dict[str, Any]:
    import torpor
    from torpor import Settings
    from torpor.store import open_store

    steps = _peer.steps_workflow(
        torpor.step(name="step"), torpor.workflow(name="bench.recovery_steps.steps"), _step_body
    )
    marks["imported"] = time.time()
    marks["launch"] = time.time()
    url = args.url or f"sqlite://{Path(args.dir) / 'torpor.db'}"
    base = Settings.from_env()
    store = open_store(settings=Settings(Path(args.dir), url, base.blob_url))
    torpor.configure(store=store)
    if args.phase == "run":
        torpor.start(steps, args.total).result(timeout=3600)
        _blocked()
    worker = torpor.Worker(store, lease_seconds=args.lease, poll=0.02)
    import threading

    threading.Thread(target=worker.run, daemon=True).start()
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            runs = store.list_runs()
            if runs and runs[0].status.value == "completed":
                _done(runs[0].output, args)
                break
            time.sleep(0.005)
    finally:
        worker.stop(grace=5)
    return {"version": {"torpor": torpor.__version__}}


# -- DBOS ------------------------------------------------------------------------------------


def _dbos(args: argparse.Namespace) -> dict[str, Any]:
    from importlib.metadata import version

    from dbos import DBOS, SetWorkflowID

    steps = _peer.steps_workflow(DBOS.step(), DBOS.workflow(), _step_body)
    marks["imported"] = time.time()
    marks["launch"] = time.time()
    url = args.url or f"sqlite:///{Path(args.dir) / 'dbos_sys.sqlite'}"
    if not args.url and args.phase == "run":
        import sqlite3

        with sqlite3.connect(Path(args.dir) / "dbos_sys.sqlite") as conn:
            conn.execute("PRAGMA journal_mode=wal")  # as in dbos_peer.py; persists in the file
        conn.close()
    DBOS(
        config={"name": "torpor-bench-recovery", "system_database_url": url, "log_level": "WARNING"}
    )
    DBOS.launch()  # in the recover phase this starts the recovery of pending workflows
    marks["launched"] = time.time()
    try:
        if args.phase == "run":
            with SetWorkflowID(WORKFLOW_ID):
                steps(args.total)
            _blocked()
        _done(DBOS.retrieve_workflow(WORKFLOW_ID).get_result(), args)
    finally:
        DBOS.destroy()
    return {"version": {"dbos": version("dbos")}}


# -- Temporal --------------------------------------------------------------------------------


def _temporal(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio
    from datetime import timedelta
    from importlib.metadata import version

    from _temporal_steps import Steps, first_new_step, step
    from temporalio.client import Client
    from temporalio.worker import Worker

    marks["imported"] = time.time()

    async def main() -> None:
        marks["launch"] = time.time()
        client = await Client.connect(args.url)
        async with Worker(
            client, task_queue="bench-recovery", workflows=[Steps], activities=[step]
        ):
            if args.phase == "run":
                # A short workflow task timeout: the dead worker's task is handed on after it
                # (the counterpart of torpor's lease); the default is 10 s.
                await client.execute_workflow(
                    Steps.run,
                    args.total,
                    id=WORKFLOW_ID,
                    task_queue="bench-recovery",
                    task_timeout=timedelta(seconds=args.lease),
                )
                _blocked()
            result = await client.get_workflow_handle(WORKFLOW_ID).result()
            if first_new_step:
                marks["first_new_step"] = first_new_step[0]
            _done(result, args)

    asyncio.run(main())
    return {"version": {"temporalio": version("temporalio")}}


def _temporal_server(args: argparse.Namespace) -> None:
    import asyncio

    from temporal_peer import DevServer

    # SIGTERM must run the `finally` below, or the dev server outlives this process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = DevServer(Path(args.dir), "wal", "full")
    server.start()
    try:
        asyncio.run(server.connect())
        _emit({"address": server.address})
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(0.5)
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=("torpor", "dbos", "temporal"), required=True)
    parser.add_argument("--phase", choices=("run", "recover", "server"), required=True)
    parser.add_argument("--total", type=int, default=13)
    parser.add_argument("--dir", required=True, help="where the SQLite files are")
    parser.add_argument("--url", help="PostgreSQL URL, or Temporal's address")
    parser.add_argument("--lease", type=float, default=1.0)
    args = parser.parse_args()
    if args.phase == "server":
        _temporal_server(args)
        return 0
    out: dict[str, Any] = {"system": args.system, "error": None}
    sys.stdout = sys.stderr  # stdout: the `at N` line and the one JSON object
    try:
        out.update({"torpor": _torpor, "dbos": _dbos, "temporal": _temporal}[args.system](args))
    except BaseException as exc:
        import traceback

        traceback.print_exc()
        out["error"] = f"{type(exc).__name__}: {exc}".strip()
    out["marks"] = marks
    _emit(out)
    return 0 if out["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
