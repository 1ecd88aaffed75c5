"""A checkpoint directory as a list of entries, cut into chunks; and back again.

Regular files are cut into spans: CRIU page images (``pages-*.img``) at virtual-address
boundaries read from their ``pagemap-*.img`` (so a page keeps its chunk when other memory
grows or shrinks), every other file at fixed offsets. Metadata is kept exactly: type,
permission bits, owner, modification time, extended attributes (overlayfs keeps whiteouts as
0:0 character devices and opaque directories as ``trusted.overlay.*`` attributes).
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._pagemap import PAGE_SIZE, PageRun, page_runs

__all__ = ["Entry", "Span", "apply_metadata", "create_node", "make_entry", "scan"]

_KINDS = {
    stat.S_IFDIR: "d",
    stat.S_IFREG: "f",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}
_MODES = {kind: fmt for fmt, kind in _KINDS.items()}


@dataclass(frozen=True)
class Span:
    """``length`` bytes at ``offset`` of a file: one chunk's worth."""

    offset: int
    length: int


@dataclass
class Entry:
    """One file, directory, link or device of a snapshot, relative to its root."""

    path: str
    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    target: str = ""
    rdev: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    spans: list[Span] = field(default_factory=list)

    def to_json(self, chunk_index: list[int]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "p": self.path, "t": self.kind, "m": self.mode, "u": self.uid, "g": self.gid,
            "mt": self.mtime_ns,
        }  # fmt: skip
        if self.kind == "f":
            out["s"] = self.size
            out["c"] = [
                v for i, s in zip(chunk_index, self.spans, strict=True) for v in (i, s.length)
            ]
        if self.kind == "l":
            out["l"] = self.target
        if self.kind in ("c", "b"):
            out["r"] = self.rdev
        if self.xattrs:
            out["x"] = {k: base64.b64encode(v).decode() for k, v in self.xattrs.items()}
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> tuple[Entry, list[int]]:
        """The entry and, for a file, the chunk-table index of each of its spans."""
        entry = cls(
            path=obj["p"], kind=obj["t"], mode=obj["m"], uid=obj["u"], gid=obj["g"],
            mtime_ns=obj["mt"], size=obj.get("s", 0), target=obj.get("l", ""),
            rdev=obj.get("r", 0),
            xattrs={k: base64.b64decode(v) for k, v in obj.get("x", {}).items()},
        )  # fmt: skip
        pairs = obj.get("c", [])
        indexes = pairs[0::2]
        offset = 0
        for length in pairs[1::2]:
            entry.spans.append(Span(offset, length))
            offset += length
        return entry, indexes


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    found = {}
    for name in sorted(names):
        try:
            found[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return found


def make_entry(root: Path, path: Path) -> Entry:
    st = os.lstat(path)
    kind = _KINDS.get(stat.S_IFMT(st.st_mode))
    if kind is None:
        raise ValueError(f"{path}: unsupported file type {stat.S_IFMT(st.st_mode):o}")
    rel = path.relative_to(root).as_posix() if path != root else "."
    return Entry(
        path=rel, kind=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        mtime_ns=st.st_mtime_ns, size=st.st_size if kind == "f" else 0,
        target=os.readlink(path) if kind == "l" else "",
        rdev=st.st_rdev if kind in ("c", "b") else 0,
        xattrs=_xattrs(str(path)) if kind != "l" else {},
    )  # fmt: skip


def _page_spans(runs: list[PageRun], window: int) -> list[Span]:
    """Spans of a pages image: all its pages whose addresses fall in one aligned window of
    ``window`` bytes form one span (they are contiguous in the file: runs come in address
    order)."""
    spans: list[Span] = []
    offset = 0
    current: int | None = None  # the window of the span being grown
    for run in runs:
        addr, end = run.vaddr, run.vaddr + run.nr_pages * PAGE_SIZE
        while addr < end:
            win = addr // window
            piece = min((win + 1) * window, end) - addr
            if win == current and spans:
                last = spans[-1]
                spans[-1] = Span(last.offset, last.length + piece)
            else:
                spans.append(Span(offset, piece))
                current = win
            offset += piece
            addr += piece
    return spans


def _fixed_spans(size: int, chunk: int) -> list[Span]:
    return [Span(off, min(chunk, size - off)) for off in range(0, size, chunk)]


def scan(root: Path, *, page_window: Callable[[int], int], file_chunk: int) -> list[Entry]:
    """Every entry under ``root`` (itself first as "."), parents before children, with the
    spans of each regular file; ``page_window`` gives the window for a pages image of a
    given size."""
    runs: dict[Path, list[PageRun]] = {}
    entries = [make_entry(root, root)]
    # Top-down: a directory's entry is appended before its children's.
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(directory)
        if any(name.startswith("pagemap-") for name in files):
            runs.update({here / name: r for name, r in page_runs(here).items()})
        for name in sorted([*dirs, *files]):
            path = here / name
            entry = make_entry(root, path)
            entries.append(entry)
            if entry.kind == "f":
                if path in runs:
                    entry.spans = _page_spans(runs[path], page_window(entry.size))
                else:
                    entry.spans = _fixed_spans(entry.size, file_chunk)
    return entries


def apply_metadata(path: Path, entry: Entry, *, as_root: bool) -> None:
    """Set owner, extended attributes, permission bits and time of a materialised entry."""
    p = str(path)
    if as_root:
        os.lchown(p, entry.uid, entry.gid)
    for name, value in entry.xattrs.items():
        try:
            os.setxattr(p, name, value, follow_symlinks=False)
        except OSError:
            if as_root:
                raise
    if entry.kind != "l":
        os.chmod(p, entry.mode)
    os.utime(p, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)


def create_node(path: Path, entry: Entry) -> None:
    """Create a non-file, non-directory entry: link, device, fifo or socket."""
    if entry.kind == "l":
        os.symlink(entry.target, path)
    else:
        os.mknod(path, _MODES[entry.kind] | 0o600, entry.rdev)
