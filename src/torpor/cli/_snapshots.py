"""`torpor snapshot` and `torpor snapshots`: checkpoint a snapshot-road run, list snapshots."""

from __future__ import annotations

import json
import time

import click

from .._config import Settings
from .._errors import TorporError
from .._model import Road, RunStatus
from ..runtime._snapshot_road import CHECKPOINT_EVENT
from ..store import Store, open_store

__all__ = ["snapshot", "snapshots"]


def _open() -> Store:
    return open_store(settings=Settings.from_env())


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds to wait for the snapshot to be stored.")  # fmt: skip
def snapshot(run_id: str, wait_s: float) -> None:
    """Checkpoint a running snapshot-road run now (its worker dumps it at once)."""
    with _open() as store:
        run = store.get_run(run_id)
        if run.road is not Road.SNAPSHOT:
            raise TorporError(
                f"run {run_id} is on the replay road: its journal is its state, it has no "
                "snapshots (start runs with --road snapshot)"
            )
        before = store.list_snapshots(run_id)
        if run.status is RunStatus.SUSPENDED and before:
            click.echo(f"{run_id} is suspended; its state is snapshot {before[-1].id}")
            return
        if run.status is not RunStatus.RUNNING:
            raise TorporError(f"run {run_id} is {run.status.value}: only a running run is dumped")
        store.send_event(run_id, CHECKPOINT_EVENT, {"requested_at": time.time()})
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            now = store.list_snapshots(run_id)
            if len(now) > len(before):
                made = now[-1]
                click.echo(
                    f"{made.id}: log seq {made.seq}, {made.raw_bytes / 1e6:.1f} MB raw, "
                    f"{made.stored_bytes / 1e3:.0f} kB new, dump {made.dump_ms:.0f} ms, "
                    f"store {made.store_ms:.0f} ms"
                )
                return
            time.sleep(0.2)
    raise TorporError(
        f"no snapshot of {run_id} within {wait_s:g} s; the request stays queued for its "
        "worker (`torpor snapshots` lists what was made)"
    )


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="One JSON list on stdout.")
def snapshots(run_id: str, as_json: bool) -> None:
    """List a run's snapshots with their sizes and timings, oldest first."""
    with _open() as store:
        records = store.list_snapshots(run_id)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in records], indent=2))
        return
    if not records:
        click.echo(f"{run_id} has no snapshots")
        return
    from ..snapshots import format_snapshots

    click.echo(format_snapshots(records))
