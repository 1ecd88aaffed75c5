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
import errno
import os
import stat
import threading
from collections.abc import Mapping
from pathlib import Path

import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._errors import ConfigError

__all__ = ["KEY_FILE", "BlobCodec", "DecodeError", "SnapshotKey"]

#: This machine's generated snapshot key, under TORPOR_HOME.
KEY_FILE = "snapshot.key"

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
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, home: Path | None = None
    ) -> SnapshotKey | None:
        """The key snapshots are encrypted with: ``TORPOR_SNAPSHOT_KEY`` (``none``: stored
        unencrypted, on purpose), else the key in ``TORPOR_SNAPSHOT_KEY_FILE``, else this
        machine's own key in ``home``/snapshot.key (``home``: default ``TORPOR_HOME``),
        generated on first use.

        A key file its group or others can read, or one that is a symbolic link, is refused.
        The generated key is one machine's: workers on several machines sharing a blob store
        need one key, set by the operator in ``TORPOR_SNAPSHOT_KEY(_FILE)``.
        """
        env = os.environ if environ is None else environ
        value = env.get("TORPOR_SNAPSHOT_KEY")
        if value:
            if value.strip().casefold() == "none":
                return None
            return cls.parse(value, "TORPOR_SNAPSHOT_KEY")
        if env.get("TORPOR_SNAPSHOT_KEY_FILE"):
            path = Path(env["TORPOR_SNAPSHOT_KEY_FILE"]).expanduser()
            return cls.parse(_read_key_file(path, "TORPOR_SNAPSHOT_KEY_FILE="), str(path))
        if home is None:
            home = Path(env.get("TORPOR_HOME") or Path.home() / ".torpor").expanduser()
        path = home.absolute() / KEY_FILE
        found = os.path.lexists(path)
        return cls.parse(_read_key_file(path, "") if found else _create_key(path), str(path))

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, data, aad)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(nonce, data, aad)


def _read_key_file(path: Path, named: str) -> bytes:
    """A key file's bytes, if only its owner can read it and it is no link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"{named}{path}: the snapshot key file is a symbolic link; put the key "
                "itself there (mode 0600)"
            ) from None
        raise ConfigError(f"{named}{path}: cannot read it ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise ConfigError(
                f"{named}{path}: the snapshot key file is readable by its group or others "
                f"(mode {stat.S_IMODE(mode):04o}); make it private with: chmod 600 {path}"
            )
        data = f.read()
    return data if len(data) == 32 else data.strip()


def _create_key(path: Path) -> bytes:
    """Write a new key to ``path`` (mode 0600), or read the one another process wrote
    first: the key is written to a private temporary file and linked into place, so the
    name appears only with the whole key behind it and two workers racing share one key."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = (os.urandom(32).hex() + "\n").encode()
        temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(temp, path)
            except FileExistsError:
                return _read_key_file(path, "")  # another worker's, written first
        finally:
            os.unlink(temp)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the snapshot key {path}: {exc.strerror}; make TORPOR_HOME "
            "writable, or set TORPOR_SNAPSHOT_KEY / TORPOR_SNAPSHOT_KEY_FILE"
        ) from None
    return text.strip()


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
