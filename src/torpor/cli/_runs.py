"""`torpor run`, `worker`, `fork` and `resume`: executing workflows from the shell."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .. import runtime
from .._config import Settings
from .._errors import RunCancelledError, RunFailedError, WorkflowNotFoundError
from .._logging import configure_logging
from .._model import RunRecord, RunStatus
from ..engine import load_source, load_workflow_ref
from ..store import open_store

if TYPE_CHECKING:
    from ..client import Client

__all__ = ["fork", "import_all", "resume", "run", "server_client", "worker"]


def _load_target(target: str) -> str:
    """The name of the workflow FUNC in FILE (importing FILE)."""
    if ":" not in target:  # a registered name: nothing is registered in `torpor run`
        raise click.UsageError(f"{target!r}: give the workflow as FILE:FUNC, e.g. agent.py:main")
    try:
        return load_workflow_ref(target).name
    except WorkflowNotFoundError as exc:
        # Its own message advises about workers; `torpor run` imports the file itself.
        raise click.ClickException(
            f"workflow {exc.workflow!r} cannot be loaded: {exc.reason}"
        ) from None


def import_all(imports: tuple[str, ...]) -> None:
    """The --import options of `worker` and `server`: modules, or files ending in .py."""
    sys.path.insert(0, os.getcwd())
    for item in imports:
        source = {"file": str(Path(item).resolve())} if item.endswith(".py") else {"module": item}
        try:
            load_source(source)
        except Exception as exc:
            raise click.ClickException(
                f"--import {item} failed: {type(exc).__name__}: {exc}"
            ) from None


def _parse_args(args_json: str | None) -> tuple[list[Any], dict[str, Any]]:
    if args_json is None:
        return [], {}
    try:
        value = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise click.ClickException(
            f"ARGS_JSON is not valid JSON ({exc.msg} at column {exc.colno}): {args_json[:80]!r}; "
            "give a list of positional arguments ('[\"acme\", 5]') or an object of keyword "
            'arguments (\'{"customer": "acme"}\')'
        ) from None
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return [], value
    raise click.ClickException(
        "ARGS_JSON must be a JSON list (positional arguments) or object (keyword arguments), "
        f"not {type(value).__name__}"
    )


def _finish(handle: runtime.Run, as_json: bool) -> None:
    """Wait for a run started in this process and print its outcome."""
    with contextlib.suppress(RunFailedError, RunCancelledError):  # printed from the record
        handle.result()
    _print_outcome(handle.record(), as_json)


def _print_outcome(record: RunRecord, as_json: bool) -> None:
    """An ended run's output, or its error (exit code 1)."""
    if record.status is RunStatus.COMPLETED:
        if as_json:
            click.echo(json.dumps(_summary(record.id, record.status, record.output, None)))
        else:
            click.echo(json.dumps(record.output, ensure_ascii=False, indent=2))
        return
    if as_json:
        click.echo(json.dumps(_summary(record.id, record.status, None, record.error)))
        raise SystemExit(1)
    if record.status is RunStatus.CANCELLED:
        raise click.ClickException(RunCancelledError(record.id).message)
    raise click.ClickException(RunFailedError(record.id, record.error).message)


def _summary(run_id: str, status: RunStatus, output: Any, error: Any) -> dict[str, Any]:
    return {"id": run_id, "status": status.value, "output": output, "error": error}


@click.command()
@click.argument("target", metavar="FILE:FUNC")
@click.argument("args_json", metavar="[ARGS_JSON]", required=False)
@click.option("--road", type=click.Choice(["replay", "snapshot"]), default="replay")
@click.option("--detach", is_flag=True, help="Only enqueue it for `torpor worker`; print its id.")
@click.option("--queue", default="default", show_default=True, help="The queue it waits in.")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
@click.option("--json", "as_json", is_flag=True, help="Print {id, status, output, error}.")
def run(
    target: str,
    args_json: str | None,
    road: str,
    detach: bool,
    queue: str,
    priority: int,
    as_json: bool,
) -> None:
    """Start a run of FUNC in FILE with ARGS_JSON (a list or an object); without --detach,
    execute it here and print its result."""
    args, kwargs = _parse_args(args_json)
    name = _load_target(target)
    handle = runtime.start(
        name, *args, road=road, detach=detach, queue=queue, priority=priority, **kwargs
    )
    if detach:
        click.echo(json.dumps({"id": handle.id}) if as_json else handle.id)
        return
    _finish(handle, as_json)


@click.command()
@click.option("--concurrency", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--queue", "queues", multiple=True, help="Only runs of this queue (repeatable).")
@click.option(
    "--queue-limit",
    "queue_limits",
    multiple=True,
    metavar="NAME=N",
    help="At most N runs of queue NAME at once, over all workers given the same limit "
    "(repeatable).",
)
@click.option("--import", "imports", multiple=True, help="Import this module or file first.")
@click.option("--lease", type=click.FloatRange(min=0.5), default=None, help="Lease seconds.")
@click.option(
    "--park-after",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds a run may block in a wait before it is parked and frees its slot.",
)
def worker(
    concurrency: int,
    queues: tuple[str, ...],
    queue_limits: tuple[str, ...],
    imports: tuple[str, ...],
    lease: float | None,
    park_after: float,
) -> None:
    """Claim and execute runs until stopped (SIGTERM or Ctrl-C: runs are released at their
    next step boundary; a second signal exits at once)."""
    configure_logging()  # text, or JSON lines with --log-format json
    import_all(imports)
    settings = Settings.from_env()
    store = open_store(settings=settings)
    w = runtime.Worker(
        store,
        concurrency=concurrency,
        queues=queues or None,
        queue_limits=_parse_limits(queue_limits),
        lease_seconds=lease or settings.lease_seconds,
        park_after=park_after,
    )
    w.install_signal_handlers()
    click.echo(f"worker {w.id}: {store.url}, concurrency {concurrency}", err=True)
    w.run(on_event=lambda message: click.echo(message, err=True))
    clean = w.stop()
    store.close()
    if not clean:
        click.echo("runs still in flight at exit; their leases will expire", err=True)


def _parse_limits(items: tuple[str, ...]) -> dict[str, int]:
    limits: dict[str, int] = {}
    for item in items:
        name, sep, number = item.partition("=")
        if not sep or not name or not number.strip().isdigit():
            raise click.BadParameter(
                f"{item!r}: give NAME=N, e.g. --queue-limit gpu=2", param_hint="--queue-limit"
            )
        limits[name] = int(number)
    return limits


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--at",
    "at",
    default=None,
    help="Replay road: re-execute from this call position (default: after all recorded "
    "calls). Snapshot road: the snapshot to restore (default: the newest).",
)
@click.option("--detach", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def fork(run_id: str, at: str | None, detach: bool, as_json: bool) -> None:
    """Start a new run from a point of RUN's history (a call position or a snapshot).

    Through `torpor server` (--url), workers execute it: without --detach, wait for it."""
    if (client := server_client()) is not None:
        with client:
            _fork_through(client, run_id, at, detach, as_json)
        return
    sys.path.insert(0, os.getcwd())
    handle = runtime.fork(run_id, at, detach=detach)
    if detach:
        click.echo(handle.id)
        return
    click.echo(f"forked {run_id} as {handle.id}", err=True)
    _finish(handle, as_json)


def _fork_through(client: Client, run_id: str, at: str | None, detach: bool, as_json: bool) -> None:
    # --at is a call position (replay road) or a snapshot id (snapshot road).
    child = client.fork(run_id, int(at) if at is not None and at.isdigit() else at)
    if detach:
        click.echo(child.id)
        return
    click.echo(f"forked {run_id} as {child.id}; waiting for a worker to execute it", err=True)
    for _ in client.follow(child.id):  # ends when the run ends
        pass
    _print_outcome(client.get_run(child.id), as_json)


def server_client() -> Client | None:
    """A client of the server named by --url / TORPOR_URL, if any."""
    obj = click.get_current_context().find_root().obj or {}
    if not obj.get("url"):
        return None
    from ..client import Client  # imported only when used: httpx2 takes ~0.1 s to load

    return Client(obj["url"], obj.get("token"))


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--from", "from_snapshot", default=None, help="Snapshot id (snapshot road).")
@click.option("--detach", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def resume(run_id: str, from_snapshot: str | None, detach: bool, as_json: bool) -> None:
    """Run a failed or cancelled run again from its journal (replay road), or roll a
    snapshot-road run back to one of its snapshots (--from; the log keeps its history)."""
    sys.path.insert(0, os.getcwd())
    handle = runtime.resume(run_id, from_snapshot=from_snapshot, detach=detach)
    if detach:
        click.echo(handle.id)
        return
    _finish(handle, as_json)
