"""Reading CRIU's ``pagemap-*.img``: which virtual addresses a ``pages-*.img`` file holds.

A pagemap image is two magic numbers, then length-prefixed protobuf messages: first a
``pagemap_head {pages_id}``, then one ``pagemap_entry {vaddr, nr_pages, in_parent, flags}``
per run of pages. Pages of entries flagged present are stored back to back, in entry order,
in ``pages-<pages_id>.img``. CRIU 4.2 writes the page count in field 5 (64 bits) and leaves
the old 32-bit field 2 at zero; both are read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PAGE_SIZE", "PageRun", "page_runs", "read_pagemap"]

PAGE_SIZE = 4096
_IMG_COMMON_MAGIC = 0x54564319
_PAGEMAP_MAGIC = 0x56084025
_PE_PARENT = 1 << 0
_PE_LAZY = 1 << 1
_PE_PRESENT = 1 << 2


@dataclass(frozen=True)
class PageRun:
    """Pages held back to back in a pages image: ``nr_pages`` pages from ``vaddr``.

    ``lazy``: a lazy restore leaves them to the lazy-pages daemon (private anonymous memory
    other than the stack); the others it reads from the pages image itself.
    """

    vaddr: int
    nr_pages: int
    lazy: bool = False


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(message: bytes) -> dict[int, int]:
    """The varint fields of one protobuf message (all a pagemap has)."""
    fields: dict[int, int] = {}
    pos = 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields[number], pos = _varint(message, pos)
        elif wire == 2:
            length, pos = _varint(message, pos)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    if pos != len(message):
        raise ValueError("truncated protobuf message")
    return fields


def read_pagemap(data: bytes) -> tuple[int, list[PageRun]]:
    """The pages image id and the runs of pages stored in it, in file order.

    Raises:
        ValueError: not a pagemap image, or one whose pages live in a parent image.
    """
    if len(data) < 8 or struct.unpack_from("<II", data) != (_IMG_COMMON_MAGIC, _PAGEMAP_MAGIC):
        raise ValueError("not a CRIU pagemap image")
    pos = 8
    messages = []
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError("truncated pagemap image")
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + length > len(data):
            raise ValueError("truncated pagemap image")
        messages.append(_fields(data[pos : pos + length]))
        pos += length
    if not messages or 1 not in messages[0]:
        raise ValueError("pagemap image without a head")
    runs = []
    for entry in messages[1:]:
        flags = entry.get(4, _PE_PRESENT)
        if entry.get(3) or flags & _PE_PARENT:
            raise ValueError("pagemap refers to a parent image (incremental dump)")
        if flags & _PE_PRESENT:
            count = entry.get(5) or entry.get(2, 0)
            runs.append(PageRun(entry.get(1, 0), count, bool(flags & _PE_LAZY)))
    return messages[0][1], runs


def page_runs(images: Path) -> dict[str, list[PageRun]]:
    """For each ``pages-*.img`` file name in ``images``, its runs of pages, when every
    pagemap parses and accounts for its pages file to the byte; files left out are chunked
    without regard to addresses."""
    found: dict[str, list[PageRun]] = {}
    for pagemap in sorted(images.glob("pagemap-*.img")):
        try:
            pages_id, runs = read_pagemap(pagemap.read_bytes())
        except (ValueError, IndexError, OSError):
            continue
        pages = images / f"pages-{pages_id}.img"
        try:
            size = pages.stat().st_size
        except OSError:
            continue
        if sum(r.nr_pages for r in runs) * PAGE_SIZE == size:
            found[pages.name] = runs
    return found
