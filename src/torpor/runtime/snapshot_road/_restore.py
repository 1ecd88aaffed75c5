"""A run's stored snapshot back to a running sandbox, falling back to older snapshots of the
run when the newest is damaged.

The glue between the two packages below, through their public names: the snapshot store
loads a snapshot's checkpoint (and, for a lazy restore, the `torpor.sandbox.PageSource` of
its memory) and knows no `Sandbox`; the sandbox restores the checkpoint and knows no store.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from ..._config import Settings
from ..._model import SnapshotRecord
from ...sandbox import CheckpointBaseRootError, Sandbox
from ...snapshots import (
    SnapshotCorruptError,
    SnapshotId,
    SnapshotNotFoundError,
    SnapshotStore,
    default_restore_root,
)

__all__ = ["Restored", "restore", "restore_latest"]


@dataclass
class Restored:
    """A sandbox running again from a snapshot.

    ``directory`` holds the loaded checkpoint; the sandbox's workspace is an overlay over
    it, so remove it only after the sandbox is torn down. ``skipped`` lists newer snapshots
    that could not be used (damaged or missing chunks), newest first. ``lazy``: the sandbox
    runs while its memory still streams in from the store (`Sandbox.pages_pending`).
    """

    sandbox: Sandbox
    record: SnapshotRecord
    directory: Path
    fetch_ms: float
    restore_ms: float
    skipped: list[SnapshotCorruptError] = field(default_factory=list)
    lazy: bool = False


def restore(
    snapshots: SnapshotStore,
    snapshot: SnapshotId | SnapshotRecord,
    *,
    root: str | os.PathLike[str] | None = None,
    settings: Settings | None = None,
    lazy: bool = False,
    fork: bool = False,
) -> Restored:
    """Load a snapshot (verifying every chunk) and restore its sandbox.

    With ``fork``, the sandbox gets a new id (`Sandbox.fork`): for when the snapshot's own
    sandbox may still be alive on this machine, whose paths a restore would share.

    With ``lazy``, only what the restore itself reads is loaded first; the sandbox runs at
    once and its private memory follows from the store, each chunk verified as it arrives
    (see docs/snapshots.md, "Lazy restore"). A damaged page chunk is then found after the
    restore: the sandbox is killed (`Sandbox.lazy_error`), never run on a wrong page.

    Raises:
        SnapshotError: the snapshot cannot be loaded (nothing is restored).
        BaseRootMismatchError: it was taken over other host files (interpreter, libraries)
            than this base root has; CRIU was not asked.
        CriuError, SandboxError: the sandbox could not be restored.
    """
    settings = settings or Settings.from_env()
    record = snapshot if isinstance(snapshot, SnapshotRecord) else snapshots.get(snapshot)
    base = Path(root) if root is not None else default_restore_root(settings)
    target = base / f"{record.id}-{secrets.token_hex(3)}"
    loaded = snapshots.load(record, target, lazy=lazy)
    started = time.perf_counter()
    try:
        make = Sandbox.fork if fork else Sandbox.restore
        try:
            sandbox = make(loaded.checkpoint(), settings=settings, lazy=lazy, pages=loaded.pages)
        except CheckpointBaseRootError as exc:  # it names the directory; the user knows the id
            raise exc.for_snapshot(record.id) from None
    except BaseException:
        if loaded.pages is not None:
            loaded.pages.close()
        shutil.rmtree(target, ignore_errors=True)
        raise
    return Restored(
        sandbox=sandbox,
        record=record,
        directory=target,
        fetch_ms=loaded.fetch_ms,
        restore_ms=round((time.perf_counter() - started) * 1000, 3),
        lazy=lazy,
    )


def restore_latest(
    snapshots: SnapshotStore,
    run_id: str,
    *,
    root: str | os.PathLike[str] | None = None,
    settings: Settings | None = None,
    skip: Collection[str] = (),
    lazy: bool = False,
    fork: bool = False,
) -> Restored:
    """Restore the run's newest snapshot whose chunks are all intact, newest first.

    ``skip``: snapshot ids not to restore (those a rollback left behind). ``fork``: as for
    `restore`.

    Raises:
        SnapshotNotFoundError: the run has no snapshot.
        SnapshotCorruptError: every snapshot of the run is damaged (the newest's error).
        SnapshotKeyError: the configured key cannot open the snapshots (no fallback: the
            older ones were saved under the same key).
    """
    records = [r for r in snapshots.list_snapshots(run_id) if r.id not in skip]
    if not records:
        raise SnapshotNotFoundError(f"{run_id} (the run has no snapshot)")
    skipped: list[SnapshotCorruptError] = []
    for record in reversed(records):
        try:
            restored = restore(
                snapshots, record, root=root, settings=settings, lazy=lazy, fork=fork
            )
        except SnapshotCorruptError as exc:
            skipped.append(exc)
            continue
        restored.skipped = skipped
        return restored
    raise skipped[0]
