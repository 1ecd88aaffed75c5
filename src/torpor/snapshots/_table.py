"""`torpor snapshots RUN` as a table for people (``--json`` uses `SnapshotStore.rows`)."""

from __future__ import annotations

from collections.abc import Sequence

from .._model import SnapshotRecord, iso

__all__ = ["format_snapshots"]


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def format_snapshots(records: Sequence[SnapshotRecord]) -> str:
    """One line per snapshot: id, log position, time, raw and newly stored size, chunks
    (new/total) and the dump and store times."""
    header = ("ID", "SEQ", "CREATED", "RAW", "STORED", "CHUNKS", "DUMP MS", "STORE MS")
    rows = [header] + [
        (
            r.id,
            str(r.seq),
            iso(r.created_at),
            _size(r.raw_bytes),
            _size(r.stored_bytes),
            f"{r.new_chunks}/{r.chunks}",
            f"{r.dump_ms:.0f}",
            f"{r.store_ms:.0f}",
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in
                  enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows
    )  # fmt: skip
