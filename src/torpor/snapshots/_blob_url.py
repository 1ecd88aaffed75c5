"""A blob store from its URL: ``file:///path`` (or a plain path) or ``s3://bucket/prefix``."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from .._config import Settings
from ._blobs import BlobStore, LocalBlobStore
from ._errors import BlobStoreError
from ._s3 import S3BlobStore

__all__ = ["open_blob_store"]


def open_blob_store(url: str, *, settings: Settings | None = None) -> BlobStore:
    """The blob store a URL names: ``file:///path`` (or a plain path) or ``s3://bucket/prefix``.

    For S3 the endpoint, credentials and region come from the usual variables
    (``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, profiles), the
    addressing style from ``settings`` (default: the environment's).

    Raises:
        BlobStoreError: the URL has an unknown scheme, or the store cannot be opened.
    """
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = unquote(parts.path) if parts.scheme else url
        if parts.netloc and parts.netloc != "localhost":
            raise BlobStoreError(
                url, "a file URL must name a local path", "write file:///absolute/path"
            )
        return LocalBlobStore(path)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise BlobStoreError(url, "no bucket in the URL", "write s3://bucket/prefix")
        return S3BlobStore(parts.netloc, parts.path.strip("/"), settings=settings)
    raise BlobStoreError(
        url, f"unknown scheme {parts.scheme!r}", "use file:///path or s3://bucket/prefix"
    )
