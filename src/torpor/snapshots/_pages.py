"""A lazy restore's memory, served from the snapshot store chunk by chunk.

A lazy load (`SnapshotStore.load(..., lazy=True)`) writes every file of the checkpoint but
the parts of ``pages-*.img`` that CRIU's lazy-pages daemon fills after the restore (private
anonymous memory); `StorePages` is then the sandbox's `PageSource`: asked for pages of a
process, it finds them through the process's pagemap, fetches the chunks holding them,
checks each against its hash (as `load` does) and returns the bytes. It fetches ahead in
file order, which is the order of the daemon's background copy.

Why the store implements the sandbox's public `torpor.sandbox.PageSource` (and writes its
`PAGES_ELSEWHERE` mark) rather than expose a reader for the runtime to adapt: the store
already speaks CRIU's image formats (it cuts page images by address and reads pagemaps), so
the page source belongs beside that knowledge; the dependency runs one way, store to
sandbox, through public names; and the load that leaves the holes is the one place that can
mark them, so no caller of `load(lazy=True)` can hand a restore a checkpoint with zeroed
memory. What the store does not know is how a sandbox is restored from it: that is the
runtime's (`torpor.runtime.snapshot_road._restore`).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..sandbox import PageSource
from ._pagemap import PAGE_SIZE, PageRun, read_pagemap
from ._tree import Span

__all__ = ["StorePages", "lazy_ranges", "pages_file"]

_AHEAD = 16 << 20  # bytes of chunks fetched ahead of the daemon's requests


@dataclass
class _PagesFile:
    """One ``pages-*.img`` as chunks: span offsets (sorted), spans, chunk indexes, and
    how many bytes of each span the daemon will ask for (its lazy pages)."""

    offsets: list[int]
    spans: list[Span]
    chunks: list[int]
    lazy: list[int]

    @classmethod
    def build(cls, spans: list[Span], chunks: list[int], eager: list[Span]) -> _PagesFile:
        eager = sorted(eager, key=lambda e: e.offset)
        lazy, j = [], 0
        for span in spans:  # both in file order: one sweep
            end = span.offset + span.length
            while j < len(eager) and eager[j].offset + eager[j].length <= span.offset:
                j += 1
            overlap, k = 0, j
            while k < len(eager) and eager[k].offset < end:
                overlap += min(end, eager[k].offset + eager[k].length) - max(
                    span.offset, eager[k].offset
                )
                k += 1
            lazy.append(span.length - overlap)
        return cls([s.offset for s in spans], spans, chunks, lazy)


@dataclass(frozen=True)
class _Run:
    vaddr: int
    nr_pages: int
    offset: int  # in the pages file
    pages: str  # the pages file's path in the snapshot


def _runs_with_offsets(name: str, runs: list[PageRun]) -> list[_Run]:
    out, offset = [], 0
    for run in runs:
        out.append(_Run(run.vaddr, run.nr_pages, offset, name))
        offset += run.nr_pages * PAGE_SIZE
    return sorted(out, key=lambda r: r.vaddr)


def lazy_ranges(images: Path, rel: str) -> tuple[dict[int, list[_Run]], dict[str, list[Span]]]:
    """From the pagemaps in ``images`` (``rel`` is its path inside the snapshot): each
    process's runs of pages, and per pages file the byte ranges a lazy restore reads itself
    (the runs not flagged lazy), which must be written before the restore.

    Raises:
        ValueError: a pagemap does not parse (the snapshot then cannot be restored lazily).
    """
    by_pid: dict[int, list[_Run]] = {}
    eager: dict[str, list[Span]] = {}
    for pagemap in sorted(images.glob("pagemap-*.img")):
        pid = int(pagemap.name[len("pagemap-") : -len(".img")])
        pages_id, runs = read_pagemap(pagemap.read_bytes())
        name = f"{rel}/pages-{pages_id}.img"
        by_pid[pid] = _runs_with_offsets(name, runs)
        offset = 0
        spans = eager.setdefault(name, [])
        for run in runs:
            length = run.nr_pages * PAGE_SIZE
            if not run.lazy:
                spans.append(Span(offset, length))
            offset += length
    return by_pid, eager


def pages_file(spans: list[Span], chunks: list[int], eager: list[Span]) -> _PagesFile:
    """A pages file's chunk layout, for `StorePages`."""
    return _PagesFile.build(spans, chunks, eager)


class StorePages(PageSource):
    """The sandbox `PageSource` of a lazily loaded snapshot (see the module docstring)."""

    def __init__(
        self,
        runs: dict[int, list[_Run]],
        files: dict[str, _PagesFile],
        fetch: Callable[[int], bytes],
        parallelism: int,
    ) -> None:
        self._runs = runs
        self._starts = {pid: [r.vaddr for r in rs] for pid, rs in runs.items()}
        self._files = files
        self._fetch = fetch
        self._pool = ThreadPoolExecutor(parallelism, thread_name_prefix="store-pages")
        self._cache: dict[tuple[str, int], Future[bytes]] = {}
        self._left: dict[tuple[str, int], int] = {}  # bytes of a cached chunk not served yet
        self._ahead: dict[str, int] = {}  # per pages file: first span not yet fetched ahead
        self._lock = threading.Lock()
        self.fetched_chunks = 0

    def read(self, pid: int, vaddr: int, nr_pages: int) -> bytes:
        if pid not in self._runs:
            raise KeyError(f"no pagemap for process {pid} in the snapshot")
        parts = []
        end = vaddr + nr_pages * PAGE_SIZE
        while vaddr < end:
            run = self._run_at(pid, vaddr)
            run_end = run.vaddr + run.nr_pages * PAGE_SIZE
            take = min(end, run_end) - vaddr
            parts.append(self._read_file(run.pages, run.offset + vaddr - run.vaddr, take))
            vaddr += take
        return b"".join(parts)

    def _run_at(self, pid: int, vaddr: int) -> _Run:
        i = bisect.bisect_right(self._starts[pid], vaddr) - 1
        runs = self._runs[pid]
        if i < 0 or vaddr >= runs[i].vaddr + runs[i].nr_pages * PAGE_SIZE:
            raise KeyError(f"process {pid} has no stored page at {vaddr:#x}")
        return runs[i]

    def _future(self, name: str, i: int) -> Future[bytes]:
        key = (name, i)
        future = self._cache.get(key)
        if future is None:
            f = self._files[name]
            future = self._cache[key] = self._pool.submit(self._fetch, f.chunks[i])
            self._left[key] = f.lazy[i]
            self.fetched_chunks += 1
        return future

    def _read_file(self, name: str, offset: int, length: int) -> bytes:
        f = self._files[name]
        first = bisect.bisect_right(f.offsets, offset) - 1
        last = bisect.bisect_right(f.offsets, offset + length - 1) - 1
        with self._lock:
            wanted = [self._future(name, i) for i in range(first, last + 1)]
            self._fetch_ahead(name, last + 1)
        out = []
        for i, future in zip(range(first, last + 1), wanted, strict=True):
            data = future.result()  # raises what the fetch raised: a damaged chunk
            span = f.spans[i]
            lo = max(offset, span.offset) - span.offset
            hi = min(offset + length, span.offset + span.length) - span.offset
            out.append(data[lo:hi])
            with self._lock:
                key = (name, i)
                self._left[key] = self._left.get(key, 0) - (hi - lo)
                if self._left[key] <= 0:  # served in full: the daemon never asks twice
                    self._cache.pop(key, None)
                    self._left.pop(key, None)
        return b"".join(out)

    def _fetch_ahead(self, name: str, start: int) -> None:
        f = self._files[name]
        i = max(start, self._ahead.get(name, 0))
        budget = _AHEAD - sum(self._files[k].spans[j].length for k, j in self._cache)
        while i < len(f.spans) and budget > 0:
            if (name, i) not in self._cache:
                self._future(name, i)
                budget -= f.spans[i].length
            i += 1
        self._ahead[name] = i

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._cache.clear()
            self._left.clear()
