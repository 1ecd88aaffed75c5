"""Snapshot manifests: the chunk table and the entries of one snapshot, in one blob.

Layout::

    b"TSM1" | flags (1: encrypted) | key fingerprint (8 bytes, zeros without a key)
    | n (u32 LE) | n chunk ids of 32 bytes | body (a codec blob: JSON, compressed, encrypted)

The chunk table is plain so that garbage collection can read which chunks a snapshot
references without the key; with a key the ids are keyed hashes and reveal nothing. Each
file's chunks are indexes into that table, so a manifest costs 32 bytes per distinct chunk
plus a compressed entry list. The manifest's own id is the blake3 hash of all its bytes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import blake3

from ._codec import BlobCodec

__all__ = ["ManifestHeader", "encode_manifest", "manifest_id", "read_body", "read_header"]

_MAGIC = b"TSM1"
_ENCRYPTED = 1
_ID = 32
_FIXED = len(_MAGIC) + 1 + 8 + 4


@dataclass(frozen=True)
class ManifestHeader:
    encrypted: bool
    fingerprint: bytes
    refs: list[bytes]
    body_offset: int


def manifest_id(blob: bytes) -> str:
    return blake3.blake3(blob).hexdigest()


def encode_manifest(codec: BlobCodec, refs: list[bytes], body: dict[str, Any]) -> bytes:
    key = codec.key
    head = b"".join(
        (
            _MAGIC,
            bytes((_ENCRYPTED if key else 0,)),
            key.fingerprint if key else bytes(8),
            struct.pack("<I", len(refs)),
            *refs,
        )
    )
    text = json.dumps(body, separators=(",", ":")).encode()
    return head + codec.encode(text, blake3.blake3(head).digest())


def read_header(blob: bytes) -> ManifestHeader:
    """The plain part of a manifest.

    Raises:
        ValueError: the bytes are no manifest.
    """
    if len(blob) < _FIXED or blob[:4] != _MAGIC:
        raise ValueError("no manifest header")
    (count,) = struct.unpack_from("<I", blob, _FIXED - 4)
    end = _FIXED + count * _ID
    if len(blob) < end:
        raise ValueError("truncated chunk table")
    refs = [blob[i : i + _ID] for i in range(_FIXED, end, _ID)]
    return ManifestHeader(bool(blob[4] & _ENCRYPTED), blob[5:13], refs, end)


def read_body(codec: BlobCodec, blob: bytes, header: ManifestHeader) -> dict[str, Any]:
    """The decoded body (raises `DecodeError` from the codec, ValueError for bad JSON)."""
    head = blob[: header.body_offset]
    text = codec.decode(blob[header.body_offset :], blake3.blake3(head).digest())
    body: dict[str, Any] = json.loads(text)
    return body
