"""Markers that let saves and garbage collection run at once, on one machine or many.

A save first writes ``pending/<save>`` holding every chunk id (and the manifest id) it will
reference, then waits while any garbage collection runs (``gc/<id>`` exists), and only then
checks which chunks are already stored. A collection first writes ``gc/<id>``, then reads the
pending markers and keeps what they name. On a store where a write is visible to the next
read (a local disk; S3 since 2020), one of the two always sees the other: a save that missed a
collection's marker was seen by that collection, and a collection that missed a save's marker
made that save wait until it was over. So a chunk a save found stored cannot vanish under it.

A marker whose process died (same machine, pid and start time gone) or that is older than a
time limit is stale and ignored: a killed save never pins its chunks forever.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..sandbox import process_start_time

__all__ = ["Marker", "decode_marker", "encode_marker", "process_identity"]


@cache
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_identity() -> dict[str, Any]:
    """Who writes a marker: enough to tell later whether that process still lives."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "boot": _boot_id(),
        "pid": pid,
        "start": process_start_time(pid),
        "time": time.time(),
    }


@dataclass
class Marker:
    """A pending save's or a running collection's marker."""

    fields: dict[str, Any]
    chunks: list[bytes]

    def stale(self, ttl: float, now: float | None = None) -> bool:
        """Whether the process behind it is gone, or it has outlived ``ttl`` seconds."""
        f = self.fields
        if (now or time.time()) - float(f.get("time", 0)) > ttl:
            return True
        if f.get("host") == socket.gethostname() and f.get("boot") == _boot_id():
            pid = f.get("pid")
            return not isinstance(pid, int) or process_start_time(pid) != f.get("start")
        return False


def encode_marker(fields: dict[str, Any], chunks: Sequence[bytes] = ()) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n" + b"".join(chunks)


def decode_marker(data: bytes) -> Marker | None:
    """The marker, or None for a torn or foreign one."""
    head, sep, tail = data.partition(b"\n")
    if not sep or len(tail) % 32:
        return None
    try:
        fields = json.loads(head)
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    return Marker(fields, [tail[i : i + 32] for i in range(0, len(tail), 32)])
