"""A run's history, acted on: fork a run from a point of it, resume a failed run, roll a
snapshot-road run back to one of its snapshots."""

from __future__ import annotations

import dataclasses
import secrets
import time

from .._errors import TorporError
from .._model import Road, RunRecord
from ..log import abandoned_snapshots, retry_position
from ..store import Store
from ._handle import Run
from ._process import the_executor, the_store

__all__ = ["fork", "resume"]


def fork(
    run_id: str,
    at: int | str | None = None,
    *,
    detach: bool = False,
    store: Store | None = None,
) -> Run:
    """A new run that continues from a point of ``run_id``'s history.

    Replay road: it reuses the recorded results of the calls before position ``at`` (all
    recorded calls if None) and executes from there. Snapshot road: it restores snapshot
    ``at`` (the newest if None) with its own copy-on-write workspace; its log starts as a
    copy of the parent's up to that snapshot.

    ``store``: another store than this process's (the HTTP server's; only with ``detach``).
    """
    store = store or the_store()
    source = store.get_run(run_id)
    if source.road is Road.SNAPSHOT:
        return _fork_snapshot(store, source, None if at is None else str(at), detach)
    if isinstance(at, str):
        if not at.isdigit():
            raise TorporError(f"--at {at!r}: a replay-road run forks at a call position (1, 2…)")
        at = int(at)
    child = store.create_run(
        source.workflow,
        road=source.road,
        input=source.input,
        queue=source.queue,
        priority=source.priority,
        forked_from=run_id,
        source=source.source,
    )
    copied = 0
    for entry in store.read(run_id):
        pos = entry.payload.get("pos") if isinstance(entry.payload, dict) else None
        if isinstance(pos, int) and (at is None or pos < at):
            store.append(child.id, entry.kind, entry.payload)
            copied += 1
    store.append(child.id, "forked", {"from": run_id, "at": at, "copied": copied})
    if not detach:
        the_executor().claim(run_id=child.id)
    return Run(child.id, store)


def _fork_snapshot(store: Store, source: RunRecord, at: str | None, detach: bool) -> Run:
    records = store.list_snapshots(source.id)
    if not records:
        raise TorporError(f"run {source.id} has no snapshot to fork from")
    if at is None:
        # The newest of the run's current timeline (any snapshot can be named with --at).
        abandoned = abandoned_snapshots(store.read(source.id))
        pick = next((r for r in reversed(records) if r.id not in abandoned), records[-1])
    else:
        matches = [r for r in records if r.id == at]
        if not matches:
            known = ", ".join(r.id for r in records[-5:])
            raise TorporError(f"run {source.id} has no snapshot {at!r}; its newest: {known}")
        pick = matches[0]
    child = store.create_run(
        source.workflow, road=source.road, input=source.input, queue=source.queue,
        priority=source.priority, forked_from=source.id, source=source.source,
    )  # fmt: skip
    for entry in store.read(source.id):
        if entry.seq > pick.seq:
            break
        store.append(child.id, entry.kind, entry.payload)
    # The child lists the parent's snapshot as its own: the chunks are shared (content
    # addressed), and its first claim restores it into a fresh copy-on-write sandbox.
    store.add_snapshot(
        dataclasses.replace(
            pick,
            id=f"{child.id}.s{pick.seq}.{secrets.token_hex(3)}",
            run_id=child.id,
            created_at=time.time(),
            stored_bytes=0,
            new_chunks=0,
        )
    )
    store.append(child.id, "forked", {"from": source.id, "snapshot": pick.id, "seq": pick.seq})
    if not detach:
        the_executor().claim(run_id=child.id)
    return Run(child.id, store)


def resume(
    run_id: str,
    *,
    from_snapshot: str | None = None,
    detach: bool = False,
    store: Store | None = None,
) -> Run:
    """Queue a failed or cancelled replay-road run again (e.g. after fixing its code).

    Recorded results are kept; a step whose recorded error ended the run executes again.

    ``from_snapshot`` (snapshot road): roll the run back to that snapshot of its own, in
    whatever state it ended or waits (not while a worker executes it). The log keeps
    everything and records the rollback; what was recorded after the snapshot no longer
    answers the run's calls, events it consumed since are delivered again, and newer
    snapshots are not restored again.
    ``store``: another store than this process's (the HTTP server's; only with ``detach``).
    """
    store = store or the_store()
    if from_snapshot is not None:
        _roll_back(store, run_id, from_snapshot)
        if not detach:
            the_executor().claim(run_id=run_id)
        return Run(run_id, store)
    retry = retry_position(store.read(run_id))
    store.requeue_run(run_id, {"retry": retry})
    if not detach:
        the_executor().claim(run_id=run_id)
    return Run(run_id, store)


def _roll_back(store: Store, run_id: str, snapshot_id: str) -> None:
    run = store.get_run(run_id)
    if run.road is not Road.SNAPSHOT:
        raise TorporError(
            f"run {run_id} is on the replay road: it has no snapshots to resume from "
            f"(`torpor fork {run_id} --at POS` re-executes it from a call position)"
        )
    abandoned = abandoned_snapshots(store.read(run_id))
    if snapshot_id in abandoned:
        raise TorporError(
            f"snapshot {snapshot_id!r} of run {run_id} is on a timeline an earlier rollback "
            f"left behind; fork it instead (`torpor fork {run_id} --at {snapshot_id}`)"
        )
    records = [r for r in store.list_snapshots(run_id) if r.id not in abandoned]
    index = next((i for i, r in enumerate(records) if r.id == snapshot_id), None)
    if index is None:
        known = ", ".join(r.id for r in records[-5:]) or "none"
        raise TorporError(
            f"run {run_id} has no snapshot {snapshot_id!r}; its newest: {known} "
            f"(`torpor snapshots {run_id}` lists them all)"
        )
    pick = records[index]
    store.rollback_run(
        run_id,
        pick.seq,
        {"snapshot": pick.id, "abandoned": [r.id for r in records[index + 1 :]]},
    )
