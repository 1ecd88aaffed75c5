"""Errors of the snapshot store; all are `TorporError`s with structured, picklable fields."""

from __future__ import annotations

from .._errors import TorporError

__all__ = [
    "BlobStoreError",
    "SnapshotCorruptError",
    "SnapshotError",
    "SnapshotKeyError",
    "SnapshotNotFoundError",
]


class SnapshotError(TorporError):
    """A snapshot could not be saved, loaded or deleted."""


class SnapshotNotFoundError(SnapshotError):
    """No listed snapshot has this id (never saved, or deleted)."""

    def __init__(self, snapshot_id: str) -> None:
        super().__init__(
            f"no snapshot {snapshot_id!r}; `torpor snapshots RUN` lists a run's snapshots"
        )
        self.snapshot_id = snapshot_id


class SnapshotCorruptError(SnapshotError):
    """A stored chunk or manifest of a snapshot is missing or does not match its hash."""

    def __init__(self, snapshot_id: str, chunk: str, problem: str) -> None:
        super().__init__(
            f"snapshot {snapshot_id}: chunk {chunk} {problem}; nothing was restored — "
            "restore an earlier snapshot of the run (restore_latest falls back by itself)"
        )
        self.snapshot_id = snapshot_id
        self.chunk = chunk
        self.problem = problem


class SnapshotKeyError(SnapshotError):
    """The configured encryption key cannot open this snapshot (wrong key, or none)."""

    def __init__(self, snapshot_id: str, problem: str) -> None:
        super().__init__(
            f"snapshot {snapshot_id}: {problem}; set TORPOR_SNAPSHOT_KEY (or "
            "TORPOR_SNAPSHOT_KEY_FILE) to the key it was saved with. Nothing was restored"
        )
        self.snapshot_id = snapshot_id
        self.problem = problem


class BlobStoreError(SnapshotError):
    """The blob store (directory or S3 bucket) cannot be used."""

    def __init__(self, url: str, problem: str, fix: str) -> None:
        super().__init__(f"blob store {url}: {problem}; {fix}")
        self.url = url
        self.problem = problem
        self.fix = fix
