"""The snapshot store: checkpoints saved as deduplicated, compressed, verified chunks.

Saving a checkpoint directory: scan it into entries and spans (`_tree`), hash every span,
write a pending marker naming every chunk the snapshot will reference (`_markers`), write the
chunks not already stored and the manifest, flush, and only then list the snapshot in the SQL
store. A crash at any point leaves at most unlisted blobs, which `gc` removes later.

Loading (`_load`): read and verify the manifest, fetch each distinct chunk once, verify its
hash, write it into a hidden directory beside the target and rename that into place when all
is there: a failed load leaves nothing behind.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._config import DEFAULT_SNAPSHOT_KEEP, Settings
from .._errors import ConfigError, RunNotFoundError
from .._model import SnapshotRecord
from ..sandbox import Checkpoint, PageSource
from ..store import Store
from ._blob_url import open_blob_store
from ._blobs import BlobStore
from ._codec import BlobCodec, SnapshotKey
from ._errors import SnapshotError, SnapshotNotFoundError
from ._gc import GcReport, collect
from ._load import chunk_key, materialise, read_manifest
from ._manifest import encode_manifest, manifest_id, read_header
from ._markers import decode_marker, encode_marker, process_identity
from ._tree import Entry, Span, scan

__all__ = ["DEFAULT_KEEP_LAST", "Loaded", "SnapshotId", "SnapshotStore", "default_page_window"]

SnapshotId = str
DEFAULT_FILE_CHUNK = 256 * 1024
DEFAULT_KEEP_LAST = DEFAULT_SNAPSHOT_KEEP
_BATCH = 8 << 20  # bytes of chunks per worker task


def default_page_window(pages_bytes: int) -> int:
    """Bytes of address space per chunk for a CRIU pages image of this size.

    Small images get single pages: between two turns of a small agent ~8 % of its 4 KiB
    pages change, scattered, and 16 KiB windows stored 1.9x as many bytes (bench/
    snapshot_store.py). Large images get larger windows so that a 1 GB process is ~16,000
    blobs, not 262,000: per-blob costs (a file, an S3 request) then dominate.
    """
    if pages_bytes < 64 << 20:
        return 4096
    if pages_bytes < 1 << 30:
        return 16384
    return 65536


@dataclass(frozen=True)
class Loaded:
    """A snapshot written back to a directory, and what it took."""

    record: SnapshotRecord
    directory: Path
    fetch_ms: float
    raw_bytes: int
    chunks: int
    #: After a lazy load: where `Sandbox.restore(..., lazy=True, pages=...)` gets the memory
    #: that the directory's page images leave out.
    pages: PageSource | None = None

    def checkpoint(self) -> Checkpoint:
        """The directory as a sandbox `Checkpoint`, ready for `Sandbox.restore`."""
        return Checkpoint.load(self.directory)


@dataclass
class _Plan:
    """What a save writes: entries with their chunk indexes, and where each chunk's bytes are."""

    entries: list[Entry]
    indexes: dict[str, list[int]] = field(default_factory=dict)
    refs: list[bytes] = field(default_factory=list)
    sources: list[tuple[Path, Span]] = field(default_factory=list)  # first place of each ref


class SnapshotStore:
    """Snapshots of runs: chunks and manifests in a `BlobStore`, listings in the SQL `Store`.

    Args:
        store: where snapshots are listed (``add_snapshot``/``list_snapshots``).
        blobs: where chunks and manifests are kept.
        key: encrypt at rest with this key (AES-256-GCM); None stores plain blobs.
        page_window: bytes of address space per chunk of a CRIU pages image (a multiple of
            4096); by default `default_page_window` of the image's size.
        file_chunk: bytes per chunk of every other file.
        level: zstd compression level.
        keep_last: snapshots `prune` keeps per finished run.
        pending_ttl: seconds after which a pending save's marker counts as abandoned.
        gc_ttl: seconds after which a collection's marker counts as abandoned.
        gc_wait: seconds a save waits for a running collection before giving up.
    """

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        *,
        key: SnapshotKey | None = None,
        page_window: int | None = None,
        file_chunk: int = DEFAULT_FILE_CHUNK,
        level: int = 3,
        keep_last: int = DEFAULT_KEEP_LAST,
        pending_ttl: float = 6 * 3600,
        gc_ttl: float = 3600,
        gc_wait: float = 600,
    ) -> None:
        if page_window is not None and (page_window % 4096 or page_window <= 0):
            raise ConfigError("page_window must be a positive multiple of 4096")
        if file_chunk <= 0:
            raise ConfigError("file_chunk must be positive")
        self.store = store
        self.blobs = blobs
        self.codec = BlobCodec(key, level=level)
        self.page_window = page_window
        self.file_chunk = file_chunk
        self.keep_last = keep_last
        self.pending_ttl = pending_ttl
        self.gc_ttl = gc_ttl
        self.gc_wait = gc_wait
        # Tests set this to act between the phases of a save (scanned, pending, known,
        # chunks, manifest, listed).
        self._phase_hook: Callable[[str], None] | None = None

    @classmethod
    def from_settings(cls, store: Store, settings: Settings | None = None) -> SnapshotStore:
        """The snapshot store ``settings`` configure (default: the environment's):
        ``TORPOR_BLOB_URL``, ``TORPOR_S3_ADDRESSING_STYLE``, ``TORPOR_SNAPSHOT_KEEP``, and
        the key in ``TORPOR_SNAPSHOT_KEY``/``TORPOR_SNAPSHOT_KEY_FILE``, else the machine's
        own under ``TORPOR_HOME`` (encrypted by default; ``TORPOR_SNAPSHOT_KEY=none`` opts
        out)."""
        settings = settings or Settings.from_env()
        return cls(
            store,
            open_blob_store(settings.blob_url, settings=settings),
            key=SnapshotKey.from_env(home=settings.home),
            keep_last=settings.snapshot_keep,
        )

    def _window(self, pages_bytes: int) -> int:
        return self.page_window or default_page_window(pages_bytes)

    def _phase(self, name: str) -> None:
        if self._phase_hook is not None:
            self._phase_hook(name)

    # -- saving ---------------------------------------------------------------------------

    def save(
        self,
        checkpoint: Checkpoint | str | os.PathLike[str],
        *,
        run_id: str,
        seq: int,
        dump_ms: float | None = None,
        epoch: int | None = None,
    ) -> SnapshotId:
        """Store a checkpoint (or any directory) as a snapshot of ``run_id`` at log ``seq``.

        ``epoch``: the saving worker's claim of the run; if the run was claimed since, the
        snapshot is not listed (`FencedError`; its chunks are collected as orphans).

        Only chunks not already stored are written. The snapshot is listed in the store only
        after all its chunks and its manifest are durable.

        Returns:
            The new snapshot's id.
        Raises:
            SnapshotError: the directory cannot be read or the blob store written.
            RunNotFoundError: no such run.
            FencedError: ``epoch`` is no longer the run's.
        """
        started = time.perf_counter()
        if isinstance(checkpoint, str | os.PathLike):
            directory = Path(checkpoint).absolute()
        else:
            directory = checkpoint.directory
            if dump_ms is None:
                dump_ms = checkpoint.dump_seconds * 1000
        if not directory.is_dir():
            raise SnapshotError(f"cannot save {directory}: it is no directory")
        snapshot_id = f"{run_id}.s{seq}.{secrets.token_hex(3)}"
        plan = self._plan(directory)
        raw_bytes = sum(e.size for e in plan.entries)
        body = {
            "version": 1,
            "snapshot": snapshot_id,
            "run_id": run_id,
            "seq": seq,
            "entries": [e.to_json(plan.indexes.get(e.path, [])) for e in plan.entries],
        }
        manifest = encode_manifest(self.codec, plan.refs, body)
        mid = manifest_id(manifest)
        self._phase("scanned")

        pending = f"pending/{snapshot_id}"
        fields = {**process_identity(), "snapshot": snapshot_id, "manifest": mid}
        self.blobs.put(pending, encode_marker(fields, plan.refs), durable=True)
        try:
            self._phase("pending")
            self._wait_for_collections()
            known = self._parent_refs(run_id)
            self._phase("known")
            new_chunks, stored = self._write_chunks(plan, known)
            self.blobs.flush()
            self._phase("chunks")
            self.blobs.put(f"manifests/{mid}", manifest)
            self.blobs.flush()
            self._phase("manifest")
            if not self.blobs.exists(pending):
                raise SnapshotError(
                    f"snapshot {snapshot_id}: its save took so long that garbage collection "
                    "took it for abandoned; save again (or raise pending_ttl)"
                )
            record = SnapshotRecord(
                id=snapshot_id,
                run_id=run_id,
                seq=seq,
                manifest=mid,
                created_at=time.time(),
                raw_bytes=raw_bytes,
                stored_bytes=stored + len(manifest),
                chunks=len(plan.refs),
                new_chunks=new_chunks,
                dump_ms=round(dump_ms or 0.0, 3),
                store_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            self.store.add_snapshot(record, epoch=epoch)
            self._phase("listed")
        finally:
            self.blobs.delete(pending)
        return snapshot_id

    def _plan(self, directory: Path) -> _Plan:
        try:
            entries = scan(directory, page_window=self._window, file_chunk=self.file_chunk)
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"cannot read {directory}: {exc}") from None
        plan = _Plan(entries)
        files = [e for e in entries if e.kind == "f"]
        tasks = [(directory / e.path, e.path, batch) for e in files for batch in _batches(e.spans)]
        with ThreadPoolExecutor(self.blobs.parallelism) as pool:
            hashed = pool.map(lambda t: self._hash_spans(t[0], t[2]), tasks)
            ids_by_path: dict[str, list[bytes]] = defaultdict(list)
            for (_, rel, _), ids in zip(tasks, hashed, strict=True):
                ids_by_path[rel].extend(ids)
        index: dict[bytes, int] = {}
        for e in files:
            slots = plan.indexes[e.path] = []
            for span, cid in zip(e.spans, ids_by_path[e.path], strict=True):
                if cid not in index:
                    index[cid] = len(plan.refs)
                    plan.refs.append(cid)
                    plan.sources.append((directory / e.path, span))
                slots.append(index[cid])
        return plan

    def _hash_spans(self, path: Path, spans: list[Span]) -> list[bytes]:
        with _open(path) as fd:
            return [self.codec.chunk_id(_read(fd, s)) for s in spans]

    def _wait_for_collections(self) -> None:
        deadline = time.monotonic() + self.gc_wait
        while True:
            running = []
            for info in self.blobs.list("gc/"):
                data = self.blobs.get(info.key)
                marker = decode_marker(data) if data is not None else None
                if marker is not None and not marker.stale(self.gc_ttl):
                    running.append(info.key)
            if not running:
                return
            if time.monotonic() > deadline:
                raise SnapshotError(
                    f"garbage collection ({', '.join(running)}) has run for over "
                    f"{self.gc_wait:g} s; the snapshot was not saved — retry later"
                )
            time.sleep(0.02)

    def _parent_refs(self, run_id: str) -> set[bytes]:
        """Chunks of the run's newest listed snapshot: stored, and safe from collection now
        that this save's pending marker is seen by every collection."""
        try:
            records = self.list_snapshots(run_id)
        except SnapshotNotFoundError:
            return set()
        if not records:
            return set()
        blob = self.blobs.get(f"manifests/{records[-1].manifest}")
        if blob is None or manifest_id(blob) != records[-1].manifest:
            return set()
        try:
            return set(read_header(blob).refs)
        except ValueError:
            return set()

    def _write_chunks(self, plan: _Plan, known: set[bytes]) -> tuple[int, int]:
        todo = [i for i, cid in enumerate(plan.refs) if cid not in known]

        def write(batch: list[int]) -> tuple[int, int]:
            written = stored = 0
            for i in batch:
                cid = plan.refs[i]
                key = chunk_key(cid)
                if self.blobs.exists(key):
                    continue
                path, span = plan.sources[i]
                with _open(path) as fd:
                    data = _read(fd, span)
                if self.codec.chunk_id(data) != cid:
                    raise SnapshotError(f"{path} changed while it was being saved")
                blob = self.codec.encode(data, cid)
                self.blobs.put(key, blob)
                written += 1
                stored += len(blob)
            return written, stored

        batches = list(_index_batches(todo, plan.sources))
        with ThreadPoolExecutor(self.blobs.parallelism) as pool:
            results = list(pool.map(write, batches))
        return sum(r[0] for r in results), sum(r[1] for r in results)

    # -- listing --------------------------------------------------------------------------

    def list_snapshots(self, run_id: str) -> list[SnapshotRecord]:
        """A run's snapshots that are listed and not deleted, oldest first.

        Raises:
            SnapshotNotFoundError: no such run.
        """
        try:
            records = self.store.list_snapshots(run_id)
        except RunNotFoundError:
            raise SnapshotNotFoundError(f"{run_id} (no such run)") from None
        deleted = {i.key.split("/", 1)[1] for i in self.blobs.list(f"deleted/{run_id}.")}
        return [r for r in records if r.id not in deleted]

    def rows(self, run_id: str) -> list[dict[str, Any]]:
        """`torpor snapshots RUN --json`: one object per snapshot, oldest first."""
        return [r.to_json() for r in self.list_snapshots(run_id)]

    def get(self, snapshot_id: SnapshotId) -> SnapshotRecord:
        """The listed snapshot with this id.

        Raises:
            SnapshotNotFoundError: there is none (or it was deleted).
        """
        record = self.store.get_snapshot(snapshot_id)
        if record is None or self.blobs.exists(f"deleted/{snapshot_id}"):
            raise SnapshotNotFoundError(snapshot_id)
        return record

    # -- loading --------------------------------------------------------------------------

    def load(
        self,
        snapshot: SnapshotId | SnapshotRecord,
        into: str | os.PathLike[str],
        *,
        lazy: bool = False,
    ) -> Loaded:
        """Write a snapshot back as a directory ``into`` (created; it must not exist).

        Every chunk is checked against its hash; nothing appears at ``into`` unless all of
        the snapshot was fetched and verified. For a fast restore, load into memory-backed
        storage (``/dev/shm``).

        With ``lazy``, the page images get only the pages a lazy restore reads itself; the
        rest (private anonymous memory, the bulk of a large process) stay holes, served
        later by ``Loaded.pages`` chunk by chunk, each verified when it is fetched. Such a
        directory can only be restored lazily with that source (`Sandbox.restore` refuses
        it otherwise).

        Raises:
            SnapshotNotFoundError: no such snapshot.
            SnapshotCorruptError: a chunk or the manifest is missing or damaged (named).
            SnapshotKeyError: the snapshot is encrypted with another key, or no key is set.
        """
        started = time.perf_counter()
        record = snapshot if isinstance(snapshot, SnapshotRecord) else self.get(snapshot)
        target = Path(into).absolute()
        if target.exists():
            raise SnapshotError(f"cannot load {record.id} into {target}: it already exists")
        chunks, entries, indexes = read_manifest(self.blobs, self.codec, record)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.parent / f".{target.name}.partial-{secrets.token_hex(4)}"
        pages = None
        try:
            pages = materialise(chunks, entries, indexes, partial, lazy)
            os.rename(partial, target)
        except BaseException:
            if pages is not None:
                pages.close()
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return Loaded(
            record=record,
            directory=target,
            fetch_ms=round((time.perf_counter() - started) * 1000, 3),
            raw_bytes=sum(e.size for e in entries),
            chunks=len(chunks.refs),
            pages=pages,
        )

    # -- deleting -------------------------------------------------------------------------

    def delete(self, snapshot_id: SnapshotId) -> None:
        """Delete a snapshot: it is no longer listed or loadable; `gc` then frees the chunks
        no other snapshot references.

        Raises:
            SnapshotNotFoundError: no such snapshot.
        """
        self.get(snapshot_id)
        # The tombstone is durable before anything else: a crash leaves it deleted.
        self.blobs.put(f"deleted/{snapshot_id}", b"", durable=True)
        self.store.delete_snapshot(snapshot_id)

    def delete_run(self, run_id: str) -> list[SnapshotId]:
        """Delete every snapshot of a run; returns their ids."""
        ids = [r.id for r in self.list_snapshots(run_id)]
        for sid in ids:
            self.delete(sid)
        return ids

    def prune(
        self, *, keep_last: int | None = None, keep_unfinished: bool = True
    ) -> list[SnapshotId]:
        """Apply retention: keep each run's last ``keep_last`` snapshots (default: the
        store's), and every snapshot of runs that have not finished when ``keep_unfinished``.
        Returns the ids deleted; run `gc` to free their chunks."""
        keep = self.keep_last if keep_last is None else keep_last
        if keep < 1:
            raise ConfigError("keep_last must be at least 1")
        deleted = []
        for run in self.store.list_runs():
            if keep_unfinished and not run.status.terminal:
                continue
            for record in self.list_snapshots(run.id)[:-keep]:
                self.delete(record.id)
                deleted.append(record.id)
        return deleted

    def gc(self, *, temp_age: float = 3600.0) -> GcReport:
        """Free every chunk and manifest that no listed or pending snapshot references.

        Safe while other processes save (see `_markers`); saves that start meanwhile wait
        for it to end. ``temp_age``: also remove leftovers of interrupted blob writes older
        than this many seconds.
        """
        return collect(
            self.blobs, self.all_records, pending_ttl=self.pending_ttl, temp_age=temp_age
        )

    def __enter__(self) -> SnapshotStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.blobs.close()

    def all_records(self) -> Iterator[SnapshotRecord]:
        """Every listed, undeleted snapshot of every run."""
        for run in self.store.list_runs():
            try:
                yield from self.list_snapshots(run.id)
            except SnapshotNotFoundError:
                continue


class _open:
    """A read-only file descriptor as a context manager."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _read(fd: int, span: Span) -> bytes:
    data = os.pread(fd, span.length, span.offset)
    if len(data) != span.length:
        raise SnapshotError("a file shrank while it was being saved")
    return data


def _batches(spans: list[Span]) -> Iterable[list[Span]]:
    batch: list[Span] = []
    size = 0
    for span in spans:
        batch.append(span)
        size += span.length
        if size >= _BATCH:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _index_batches(todo: list[int], sources: list[tuple[Path, Span]]) -> Iterable[list[int]]:
    batch: list[int] = []
    size = 0
    for i in todo:
        batch.append(i)
        size += sources[i][1].length
        if size >= _BATCH // 4:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
