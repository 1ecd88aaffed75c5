"""Blob stores: where chunks and manifests live, a local directory or an S3 bucket.

A blob store is a flat map from keys (``chunks/ab/ab12...``) to immutable bytes. Writes of a
blob are atomic (a reader sees all of it or nothing); `flush` makes every blob written so far
durable, so the snapshot store lists a snapshot only after flushing its chunks and manifest.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._errors import BlobStoreError

__all__ = ["BlobInfo", "BlobStore", "LocalBlobStore"]


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob: its key, size in bytes and last-modified time (seconds since the epoch)."""

    key: str
    size: int
    modified: float


class BlobStore(ABC):
    """Immutable blobs under string keys. Safe to share between threads."""

    url: str
    #: How many requests are worth running at once against this store.
    parallelism: int = 4

    @abstractmethod
    def put(self, key: str, data: bytes, *, durable: bool = False) -> None:
        """Store ``data`` under ``key`` atomically (replacing any blob there).

        With ``durable`` the blob is durable on return; otherwise after the next `flush`.
        """

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The blob's bytes, or None if there is no blob under ``key``."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the blob under ``key``; no error if there is none."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[BlobInfo]:
        """Every blob whose key starts with ``prefix`` (a folder such as ``chunks/``)."""

    def flush(self) -> None:  # noqa: B027 - stores whose writes are durable on return skip it
        """Make every blob written so far durable."""

    def clean_temporary(self, older_than: float) -> int:
        """Remove leftovers of writes interrupted more than ``older_than`` seconds ago;
        returns how many. Stores whose writes leave none return 0."""
        return 0

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections."""


class LocalBlobStore(BlobStore):
    """Blobs as files under a directory; a write goes to ``tmp/`` and is renamed into place."""

    parallelism = 4

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        try:
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BlobStoreError(
                self.url, f"cannot create the directory ({exc.strerror})",
                "point TORPOR_BLOB_URL (or TORPOR_HOME) at a writable directory",
            ) from None  # fmt: skip
        self._made: set[Path] = set()
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"bad blob key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes, *, durable: bool = False) -> None:
        path = self._path(key)
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._made.add(path.parent)
        tmp = self.root / "tmp" / f"{os.getpid()}-{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            _fsync_directory(path.parent)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self._path(folder) if folder else self.root
        for directory, _dirs, files in os.walk(base):
            for name in files:
                path = Path(directory) / name
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield BlobInfo(key, st.st_size, st.st_mtime)

    def flush(self) -> None:
        # One syncfs for the whole batch: an fsync per chunk would cost milliseconds each.
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _syncfs is None or _syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def clean_temporary(self, older_than: float) -> int:
        import time

        removed = 0
        now = time.time()
        for info in list(self.list("tmp/")):
            if now - info.modified >= older_than:
                self._path(info.key).unlink(missing_ok=True)
                removed += 1
        return removed


def _load_syncfs() -> ctypes._NamedFuncPointer | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int
    return func


_syncfs = _load_syncfs()


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
