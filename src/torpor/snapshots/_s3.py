"""The S3-compatible blob store, through boto3 (AWS S3, MinIO, Ceph RGW, R2, moto, ...)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .._config import Settings
from ._blobs import BlobInfo, BlobStore
from ._errors import BlobStoreError

__all__ = ["S3BlobStore"]


class S3BlobStore(BlobStore):
    """Blobs as objects under ``prefix/`` in one bucket. A PUT is atomic and durable when it
    returns, so `flush` has nothing to do.

    Endpoint, credentials and region come from boto3's usual sources (``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``, ``AWS_REGION``, profiles, instance roles). Set
    ``TORPOR_S3_ADDRESSING_STYLE=path`` (or pass ``settings`` with that
    ``s3_addressing_style``) for servers that do not serve virtual-host style.
    """

    parallelism = 16

    def __init__(
        self, bucket: str, prefix: str = "", *, client: Any = None, settings: Settings | None = None
    ) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        if client is None:
            try:
                import boto3  # type: ignore[import-untyped]
                from botocore.config import Config  # type: ignore[import-untyped]
            except ImportError:
                raise BlobStoreError(
                    self.url, "boto3 is not installed", "pip install boto3"
                ) from None
            style = (settings or Settings.from_env()).s3_addressing_style
            config = Config(
                max_pool_connections=self.parallelism * 2,
                retries={"mode": "standard", "max_attempts": 5},
                s3={"addressing_style": style},
            )
            client = boto3.session.Session().client("s3", config=config)
        self._client = client
        self._errors = _botocore_errors()

    def _fail(self, exc: Exception, doing: str) -> BlobStoreError:
        return BlobStoreError(
            self.url, f"{doing} failed: {exc}",
            "check AWS_ENDPOINT_URL, the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY), "
            "AWS_REGION and that the bucket exists",
        )  # fmt: skip

    def put(self, key: str, data: bytes, *, durable: bool = False) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)
        except self._errors as exc:
            raise self._fail(exc, f"PUT {key}") from None

    def get(self, key: str) -> bytes | None:
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            body: bytes = reply["Body"].read()
        except self._errors as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._fail(exc, f"GET {key}") from None
        return body

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except self._errors as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise self._fail(exc, f"HEAD {key}") from None
        return True

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except self._errors as exc:
            raise self._fail(exc, f"DELETE {key}") from None

    def list(self, prefix: str) -> Iterator[BlobInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
                for item in page.get("Contents", []):
                    yield BlobInfo(
                        item["Key"][len(self.prefix) :],
                        int(item["Size"]),
                        item["LastModified"].timestamp(),
                    )
        except self._errors as exc:
            raise self._fail(exc, f"LIST {prefix}") from None

    def close(self) -> None:
        self._client.close()


def _botocore_errors() -> tuple[type[Exception], ...]:
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    return (BotoCoreError, ClientError)


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
