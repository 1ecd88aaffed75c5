"""Garbage collection: mark every chunk a listed or pending snapshot references, sweep the rest.

Mark-and-sweep over all manifests rather than reference counts: no count can drift after a
crash, and the only coordination needed with concurrent saves is the marker protocol of
`_markers`. See docs/snapshots.md for why this is safe while other processes save.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .._model import SnapshotRecord
from ._blobs import BlobStore
from ._manifest import manifest_id, read_header
from ._markers import decode_marker, encode_marker, process_identity

__all__ = ["GcReport", "collect"]


@dataclass
class GcReport:
    """What a collection found and removed."""

    live_snapshots: int = 0
    live_chunks: int = 0
    deleted_chunks: int = 0
    deleted_manifests: int = 0
    freed_bytes: int = 0
    stale_pending: int = 0
    temporary_files: int = 0
    #: Listed snapshots whose manifest is missing or damaged: they cannot be restored.
    broken_snapshots: list[str] = field(default_factory=list)


def collect(
    blobs: BlobStore,
    listed: Callable[[], Iterable[SnapshotRecord]],
    *,
    pending_ttl: float,
    temp_age: float = 3600.0,
) -> GcReport:
    """Delete every chunk and manifest in ``blobs`` that no listed snapshot (``listed()``,
    asked after the pending saves were read) or pending save younger than ``pending_ttl``
    seconds references."""
    report = GcReport()
    marker = f"gc/{secrets.token_hex(8)}"
    blobs.put(marker, encode_marker(process_identity()), durable=True)
    try:
        live_chunks: set[bytes] = set()
        live_manifests: set[str] = set()
        # Pending saves first, then the listing: a save lists its snapshot before it drops
        # its marker, so every snapshot is seen in one place or the other.
        for info in list(blobs.list("pending/")):
            data = blobs.get(info.key)
            pending = decode_marker(data) if data is not None else None
            if pending is None:
                continue
            if pending.stale(pending_ttl):
                blobs.delete(info.key)
                report.stale_pending += 1
                continue
            live_chunks.update(pending.chunks)
            live_manifests.add(str(pending.fields.get("manifest")))
        for record in listed():
            report.live_snapshots += 1
            live_manifests.add(record.manifest)
            blob = blobs.get(f"manifests/{record.manifest}")
            try:
                if blob is None or manifest_id(blob) != record.manifest:
                    raise ValueError
                live_chunks.update(read_header(blob).refs)
            except ValueError:
                report.broken_snapshots.append(record.id)
        report.live_chunks = len(live_chunks)
        live_hex = {c.hex() for c in live_chunks}
        for info in list(blobs.list("manifests/")):
            if info.key.rsplit("/", 1)[1] not in live_manifests:
                blobs.delete(info.key)
                report.deleted_manifests += 1
                report.freed_bytes += info.size
        for info in list(blobs.list("chunks/")):
            if info.key.rsplit("/", 1)[1] not in live_hex:
                blobs.delete(info.key)
                report.deleted_chunks += 1
                report.freed_bytes += info.size
        report.temporary_files = blobs.clean_temporary(temp_age)
    finally:
        blobs.delete(marker)
    return report
