"""Loading a snapshot: its manifest read and verified, its chunks fetched back into files.

Each distinct chunk is fetched once, checked against its hash and written to every place
the manifest gives it; `SnapshotStore.load` writes into a hidden directory beside the
target and renames that into place when all is there, so a failed load leaves nothing.
A lazy load leaves most of the page images as holes and returns the `StorePages` that
serves them later (`_pages.py`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .._config import Settings
from .._model import SnapshotRecord
from ..sandbox import PAGES_ELSEWHERE
from ._blobs import BlobStore
from ._codec import BlobCodec, DecodeError
from ._errors import SnapshotCorruptError, SnapshotError, SnapshotKeyError
from ._manifest import manifest_id, read_body, read_header
from ._pages import StorePages, lazy_ranges, pages_file
from ._tree import Entry, apply_metadata, create_node

__all__ = ["StoredChunks", "chunk_key", "default_restore_root", "materialise", "read_manifest"]

# Where each chunk goes: chunk index -> (file, offset) places.
_Places = dict[int, list[tuple[Path, int]]]


def chunk_key(cid: bytes) -> str:
    """The blob store key of the chunk whose id is ``cid``."""
    h = cid.hex()
    return f"chunks/{h[:2]}/{h}"


@dataclass(frozen=True)
class StoredChunks:
    """The chunks of one stored snapshot, by their index in its manifest."""

    blobs: BlobStore
    snapshot_id: str
    codec: BlobCodec
    refs: list[bytes]

    def fetch(self, index: int) -> bytes:
        """Chunk ``index``'s bytes, checked against its hash.

        Raises:
            SnapshotCorruptError: it is missing or damaged.
            SnapshotKeyError: it cannot be decrypted with the configured key.
        """
        cid = self.refs[index]
        name = cid.hex()
        blob = self.blobs.get(chunk_key(cid))
        if blob is None:
            raise SnapshotCorruptError(self.snapshot_id, name, "is missing from the blob store")
        try:
            data = self.codec.decode(blob, cid)
        except DecodeError as exc:
            if exc.reason == "key":
                raise SnapshotKeyError(self.snapshot_id, f"chunk {name} {exc.detail}") from None
            raise SnapshotCorruptError(self.snapshot_id, name, exc.detail) from None
        if self.codec.chunk_id(data) != cid:
            raise SnapshotCorruptError(self.snapshot_id, name, "does not match its hash")
        return data

    def write(self, places: _Places) -> None:
        """Fetch, verify and write each chunk to its places, in parallel: reading, zstd and
        blake3 release the GIL. Each task opens a file once for all its chunks."""

        def fetch(batch: list[int]) -> None:
            fds: dict[Path, int] = {}
            try:
                for i in batch:
                    data = self.fetch(i)
                    for path, offset in places[i]:
                        fd = fds.get(path)
                        if fd is None:
                            fd = fds[path] = os.open(path, os.O_WRONLY)
                        os.pwrite(fd, data, offset)
            finally:
                for fd in fds.values():
                    os.close(fd)

        order = sorted(places)
        if not order:
            return
        parallelism = self.blobs.parallelism
        size = max(1, len(order) // (parallelism * 4))
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        with ThreadPoolExecutor(parallelism) as pool:
            for _ in pool.map(fetch, batches):
                pass


def read_manifest(
    blobs: BlobStore, codec: BlobCodec, record: SnapshotRecord
) -> tuple[StoredChunks, list[Entry], dict[str, list[int]]]:
    """The snapshot's chunks, entries and each file's chunk indexes, from its verified
    manifest; ``codec`` is the store's (with its key, if any).

    Raises:
        SnapshotCorruptError: the manifest is missing or damaged.
        SnapshotKeyError: the snapshot is encrypted with another key, or no key is set.
    """
    what = f"manifest {record.manifest}"
    blob = blobs.get(f"manifests/{record.manifest}")
    if blob is None:
        raise SnapshotCorruptError(record.id, what, "is missing from the blob store")
    if manifest_id(blob) != record.manifest:
        raise SnapshotCorruptError(record.id, what, "does not match its hash")
    try:
        header = read_header(blob)
    except ValueError as exc:
        raise SnapshotCorruptError(record.id, what, f"is unreadable ({exc})") from None
    key = codec.key
    if header.encrypted:
        if key is None:
            raise SnapshotKeyError(record.id, "it is encrypted and no key is configured")
        if header.fingerprint != key.fingerprint:
            raise SnapshotKeyError(
                record.id,
                f"it was encrypted with the key whose fingerprint is "
                f"{header.fingerprint.hex()}, but the configured key's is "
                f"{key.fingerprint.hex()}",
            )
    else:  # saved without a key: plain ids, readable with or without one
        codec = BlobCodec(None)
    try:
        body = read_body(codec, blob, header)
    except (DecodeError, ValueError) as exc:
        raise SnapshotCorruptError(record.id, what, f"is unreadable ({exc})") from None
    entries, indexes = [], {}
    for obj in body["entries"]:
        entry, idx = Entry.from_json(obj)
        entries.append(entry)
        if entry.kind == "f":
            indexes[entry.path] = idx
    return StoredChunks(blobs, record.id, codec, header.refs), entries, indexes


def materialise(
    chunks: StoredChunks,
    entries: list[Entry],
    indexes: dict[str, list[int]],
    root: Path,
    lazy: bool = False,
) -> StorePages | None:
    """Write the snapshot's entries under ``root`` (a new directory); with ``lazy``, all but
    the page images' lazy pages, whose source is returned."""
    places: _Places = defaultdict(list)
    deferred: dict[str, Entry] = {}  # page images of a lazy load: written after the rest
    for entry in entries:
        path = root / entry.path if entry.path != "." else root
        if entry.kind == "d":
            path.mkdir(mode=0o700)
        elif entry.kind == "f":
            with open(path, "wb") as f:
                f.truncate(entry.size)
            if lazy and _is_page_image(entry.path):
                deferred[entry.path] = entry
                continue
            for i, span in zip(indexes[entry.path], entry.spans, strict=True):
                places[i].append((path, span.offset))
        else:
            create_node(path, entry)
    chunks.write(places)
    pages = _lazy_pages(chunks, deferred, indexes, root) if lazy else None
    as_root = os.geteuid() == 0
    for entry in entries:  # files, links and nodes first; then directories, deepest first
        if entry.kind != "d":
            apply_metadata(root / entry.path, entry, as_root=as_root)
    for entry in reversed(entries):
        if entry.kind == "d":
            apply_metadata(root / entry.path if entry.path != "." else root, entry,
                           as_root=as_root)  # fmt: skip
    return pages


def _lazy_pages(
    chunks: StoredChunks, deferred: dict[str, Entry], indexes: dict[str, list[int]], root: Path
) -> StorePages:
    """Write the pages a lazy restore reads itself; the source of all the others."""
    snapshot_id = chunks.snapshot_id
    try:
        runs, eager = lazy_ranges(root / "images", "images")
    except (OSError, ValueError, IndexError) as exc:
        raise SnapshotError(
            f"snapshot {snapshot_id} cannot be restored lazily: its pagemaps do not parse "
            f"({exc}); restore it without lazy"
        ) from None
    places: _Places = defaultdict(list)
    files = {}
    for rel, entry in deferred.items():
        layout = pages_file(entry.spans, indexes[rel], eager.get(rel, list(entry.spans)))
        files[rel] = layout
        for n, (i, span) in enumerate(zip(indexes[rel], entry.spans, strict=True)):
            if layout.lazy[n] < span.length or rel not in eager:
                places[i].append((root / rel, span.offset))
    chunks.write(places)
    # The sandbox's own mark of a checkpoint whose pages are elsewhere: `Sandbox.restore`
    # then refuses it without its page source, rather than restore zeroed memory.
    (root / PAGES_ELSEWHERE).write_text(
        f"The lazy pages of snapshot {snapshot_id} are holes here: they came from the "
        "snapshot store during a lazy restore. Load the snapshot again to restore it.\n"
    )
    return StorePages(runs, files, chunks.fetch, chunks.blobs.parallelism)


def _is_page_image(path: str) -> bool:
    parent, _, name = path.rpartition("/")
    return parent == "images" and name.startswith("pages-") and name.endswith(".img")


def default_restore_root(settings: Settings) -> Path:
    """Where to load snapshots for a fast restore: memory-backed ``/dev/shm/torpor-restore``
    when TORPOR_HOME is on the same filesystem, else ``$TORPOR_HOME/restore``.

    Why the condition: `Sandbox.restore` copies the checkpoint's layers into the sandbox
    directory under TORPOR_HOME, and that copy fails across filesystems for now (EXDEV from
    copy_file_range); drop it once the sandbox copies across filesystems.
    """
    shm = Path("/dev/shm")
    home = settings.home
    while not home.exists() and home != home.parent:
        home = home.parent
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev == home.stat().st_dev:
        return shm / "torpor-restore"
    return settings.home / "restore"
