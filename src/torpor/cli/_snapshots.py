"""`torpor snapshot` and `torpor snapshots`: checkpoint a snapshot-road run, list snapshots."""

from __future__ import annotations

import json

import click

from .._config import Settings
from ..runtime import checkpoint_now
from ..store import Store, open_store

__all__ = ["snapshot", "snapshots"]


def _open() -> Store:
    """The store, which must exist: both commands act on an existing run."""
    return open_store(settings=Settings.from_env(), create=False)


@click.command()
@click.argument("run_id", metavar="RUN")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds to wait for the snapshot to be stored.")  # fmt: skip
def snapshot(run_id: str, wait_s: float) -> None:
    """Checkpoint a running snapshot-road run now (its worker dumps it at once)."""
    with _open() as store:
        made = checkpoint_now(store, run_id, timeout=wait_s)
    click.echo(
        f"{made.id}: log seq {made.seq}, {made.raw_bytes / 1e6:.1f} MB raw, "
        f"{made.stored_bytes / 1e3:.0f} kB new, dump {made.dump_ms:.0f} ms, "
        f"store {made.store_ms:.0f} ms"
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
