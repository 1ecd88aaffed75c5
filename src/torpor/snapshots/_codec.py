"""Chunk ids, compression and encryption of blobs.

A chunk's id is the blake3 hash of its plain bytes; with an encryption key it is a *keyed*
blake3 hash instead, so stored ids reveal nothing about contents and snapshots under
different keys never share (or dedup against) each other's chunks. Dedup works within a key.

A stored blob is ``b"TB" | version | flags | [12-byte nonce] | payload``: flags say whether
the payload is zstd-compressed and whether it is AES-256-GCM encrypted. The GCM associated
data is the header plus the blob's id, so a blob copied under another id does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._errors import ConfigError

__all__ = ["BlobCodec", "DecodeError", "SnapshotKey"]

_MAGIC = b"TB"
_VERSION = 1
_ZSTD = 1
_AES_GCM = 2
_NONCE = 12


class DecodeError(Exception):
    """A blob cannot be decoded: ``reason`` is "key" (decryption failed) or "corrupt"."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _derive(material: bytes, purpose: str) -> bytes:
    return blake3.blake3(material, derive_key_context=f"torpor snapshots 2025 {purpose}").digest()


class SnapshotKey:
    """A 256-bit key for snapshots at rest; sub-keys for encryption and chunk ids derive from it."""

    def __init__(self, material: bytes) -> None:
        if len(material) != 32:
            raise ConfigError(f"a snapshot key is 32 bytes, not {len(material)}")
        self._aead = AESGCM(_derive(material, "aes-256-gcm"))
        self.id_key = _derive(material, "chunk id")
        #: Names the key without revealing it; stored in every manifest the key encrypted.
        self.fingerprint = _derive(material, "fingerprint")[:8]

    @classmethod
    def generate(cls) -> SnapshotKey:
        return cls(os.urandom(32))

    @classmethod
    def parse(cls, text: str | bytes, source: str = "the key") -> SnapshotKey:
        """A key from 32 raw bytes, 64 hex digits or base64 of 32 bytes."""
        raw = text if isinstance(text, bytes) else text.encode()
        if len(raw) == 32 and isinstance(text, bytes):
            return cls(raw)
        stripped = raw.strip()
        for decode in (bytes.fromhex, base64.b64decode, base64.urlsafe_b64decode):
            try:
                value = decode(stripped.decode("ascii"))
            except (ValueError, binascii.Error, UnicodeDecodeError):
                continue
            if len(value) == 32:
                return cls(value)
        raise ConfigError(
            f"{source} is not a 256-bit key: give 64 hex digits, base64 of 32 bytes, or a file "
            "of 32 raw bytes (make one with: head -c 32 /dev/urandom > key)"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SnapshotKey | None:
        """The key ``TORPOR_SNAPSHOT_KEY`` holds, or the one in ``TORPOR_SNAPSHOT_KEY_FILE``;
        None when neither is set (snapshots are then stored unencrypted)."""
        env = os.environ if environ is None else environ
        if env.get("TORPOR_SNAPSHOT_KEY"):
            return cls.parse(env["TORPOR_SNAPSHOT_KEY"], "TORPOR_SNAPSHOT_KEY")
        if env.get("TORPOR_SNAPSHOT_KEY_FILE"):
            path = Path(env["TORPOR_SNAPSHOT_KEY_FILE"]).expanduser()
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"TORPOR_SNAPSHOT_KEY_FILE={path}: cannot read it ({exc.strerror})"
                ) from None
            return cls.parse(data if len(data) == 32 else data.strip(), str(path))
        return None

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(nonce, data, aad)


class BlobCodec:
    """Hashes, compresses and (with a key) encrypts blobs, and undoes it. Thread-safe."""

    def __init__(self, key: SnapshotKey | None, *, level: int = 3) -> None:
        self.key = key
        self.level = level
        self._local = threading.local()

    def chunk_id(self, data: bytes | memoryview) -> bytes:
        if self.key is None:
            return blake3.blake3(data, max_threads=1).digest()
        return blake3.blake3(data, key=self.key.id_key).digest()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c: zstandard.ZstdCompressor | None = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d: zstandard.ZstdDecompressor | None = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def encode(self, data: bytes | memoryview, blob_id: bytes) -> bytes:
        flags = 0
        payload: bytes | memoryview = data
        packed = self._compressor().compress(data)
        if len(packed) < len(data):  # random memory does not compress: store it as it is
            payload, flags = packed, _ZSTD
        if self.key is None:
            return _MAGIC + bytes((_VERSION, flags)) + bytes(payload)
        flags |= _AES_GCM
        header = _MAGIC + bytes((_VERSION, flags))
        nonce = os.urandom(_NONCE)
        return header + nonce + self.key.encrypt(nonce, bytes(payload), header + blob_id)

    def decode(self, blob: bytes, blob_id: bytes) -> bytes:
        """The plain bytes of a blob.

        Raises:
            DecodeError: wrong or missing key ("key"), or damaged bytes ("corrupt").
        """
        if len(blob) < 4 or blob[:2] != _MAGIC or blob[2] != _VERSION:
            raise DecodeError("corrupt", "has no valid blob header")
        flags = blob[3]
        payload = blob[4:]
        if flags & _AES_GCM:
            if self.key is None:
                raise DecodeError("key", "is encrypted and no key is configured")
            try:
                payload = self.key.decrypt(payload[:_NONCE], payload[_NONCE:], blob[:4] + blob_id)
            except (InvalidTag, ValueError):
                raise DecodeError(
                    "corrupt", "fails authentication (damaged, or encrypted with another key)"
                ) from None
        if flags & _ZSTD:
            try:
                payload = self._decompressor().decompress(payload)
            except zstandard.ZstdError as exc:
                raise DecodeError("corrupt", f"does not decompress ({exc})") from None
        return payload
