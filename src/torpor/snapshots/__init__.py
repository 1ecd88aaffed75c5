"""The snapshot store: checkpoints of snapshot-road runs as content-addressed chunks.

CRIU page images are cut at virtual-address-aligned windows, other files at fixed offsets;
each chunk is hashed (blake3), compressed (zstd), optionally encrypted (AES-256-GCM) and
written only if not already stored, in a local directory or an S3 bucket. A manifest lists a
snapshot's chunks; the snapshot is listed in the store only once all of it is durable. Every
chunk is verified on load. See docs/snapshots.md.

Restoring a sandbox from a snapshot is the runtime's (`torpor.runtime.snapshot_road`): the
store loads checkpoints and serves a lazy restore's pages, and knows no `Sandbox`.
"""

from __future__ import annotations

from ._blob_url import open_blob_store
from ._blobs import BlobInfo, BlobStore, LocalBlobStore
from ._codec import KEY_FILE, SnapshotKey
from ._errors import (
    BlobStoreError,
    SnapshotCorruptError,
    SnapshotError,
    SnapshotKeyError,
    SnapshotNotFoundError,
)
from ._gc import GcReport
from ._load import default_restore_root
from ._s3 import S3BlobStore
from ._store import DEFAULT_KEEP_LAST, Loaded, SnapshotId, SnapshotStore, default_page_window
from ._table import format_snapshots

__all__ = [
    "DEFAULT_KEEP_LAST",
    "KEY_FILE",
    "BlobInfo",
    "BlobStore",
    "BlobStoreError",
    "GcReport",
    "Loaded",
    "LocalBlobStore",
    "S3BlobStore",
    "SnapshotCorruptError",
    "SnapshotError",
    "SnapshotId",
    "SnapshotKey",
    "SnapshotKeyError",
    "SnapshotNotFoundError",
    "SnapshotStore",
    "default_page_window",
    "default_restore_root",
    "format_snapshots",
    "open_blob_store",
]
