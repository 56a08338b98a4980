"""An object store on S3 or an S3-compatible server (MinIO, moto) through boto3.

Integrity: small objects go up in one PUT carrying the SHA-256 we computed, which S3 recomputes
and refuses on mismatch; large ones go up as a multipart upload whose every part carries its
SHA-256. After the upload the checksum the server recorded (whole-object, or S3's composite
"SHA-256 of the part digests") is compared with ours, and a mismatch removes the object. Reads ask
for checksum validation, which botocore performs for whole-object checksums; the adapter cache
verifies the SHA-256 of every file it fills on top.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from s3transfer.utils import ChunksizeAdjuster

from loraplex.adapters.local_store import write_file_atomically
from loraplex.adapters.object_store import (
    ObjectInfo,
    ObjectIntegrityError,
    ObjectNotFoundError,
    ObjectStore,
    validate_key,
    validate_prefix,
)

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB
DEFAULT_MULTIPART_THRESHOLD = 64 * MIB
DEFAULT_MULTIPART_CHUNK = 16 * MIB
_MISSING_CODES = {"404", "NoSuchKey", "NotFound"}


# Clients are thread-safe, sessions are not: one shared session (it caches the service models,
# which makes each new client cheap) is only touched under this lock.
_SESSION_LOCK = threading.Lock()
_session: boto3.session.Session | None = None


def _new_client(*, endpoint_url: str | None, region: str | None, config: Config) -> Any:
    global _session
    with _SESSION_LOCK:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


def _is_missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in _MISSING_CODES


class S3ObjectStore(ObjectStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        *,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        multipart_chunk_size: int = DEFAULT_MULTIPART_CHUNK,
    ) -> None:
        if not bucket:
            raise ValueError("S3 bucket name must not be empty")
        self.bucket = bucket
        self.prefix = validate_key(prefix.strip("/")) if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}"
        if multipart_chunk_size < MIN_PART_SIZE or multipart_threshold < MIN_PART_SIZE:
            raise ValueError(f"multipart sizes must be at least {MIN_PART_SIZE} bytes (S3 minimum)")
        self.multipart_threshold = multipart_threshold
        self.multipart_chunk_size = multipart_chunk_size
        # Path-style addressing works with any endpoint (MinIO, moto, localhost); AWS accepts it.
        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        self._client = _new_client(endpoint_url=endpoint_url, region=region, config=config)

    def _full_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, source: bytes | Path) -> None:
        full_key = self._full_key(key)
        size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        if size < self.multipart_threshold:
            body = source if isinstance(source, bytes) else Path(source).read_bytes()
            expected = _b64(hashlib.sha256(body).digest())
            self._client.put_object(
                Bucket=self.bucket,
                Key=full_key,
                Body=body,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=expected,
            )
        else:
            # s3transfer enlarges parts past 10,000 of them; the composite sum must use its size.
            part_size = ChunksizeAdjuster().adjust_chunksize(self.multipart_chunk_size, size)
            expected = _composite_sha256(source, part_size)
            transfer = TransferConfig(
                multipart_threshold=self.multipart_threshold, multipart_chunksize=part_size
            )
            extra = {"ChecksumAlgorithm": "SHA256"}
            stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
            with stream:
                self._client.upload_fileobj(
                    stream, self.bucket, full_key, ExtraArgs=extra, Config=transfer
                )
        self._check_stored_checksum(key, expected)

    def _check_stored_checksum(self, key: str, expected: str) -> None:
        """Compare the checksum the server recorded with ours; a mismatch removes the object."""
        stored = self.stored_checksum(key)
        if stored is None:  # servers that keep no checksums: the cache's SHA-256 check remains
            return
        if stored.split("-", 1)[0] != expected:
            self.delete(key)
            raise ObjectIntegrityError(
                f"{self.url}: stored checksum of {key!r} is {stored}, expected {expected}; "
                "the object was removed"
            )

    def _get_object(self, key: str) -> dict[str, Any]:
        try:
            return self._client.get_object(
                Bucket=self.bucket, Key=self._full_key(key), ChecksumMode="ENABLED"
            )
        except ClientError as exc:
            if _is_missing(exc):
                raise ObjectNotFoundError(f"no object {key!r} in {self.url}") from exc
            raise

    def get_bytes(self, key: str) -> bytes:
        body = self._get_object(key)["Body"]
        try:
            return body.read()
        finally:
            body.close()

    def get_to_file(self, key: str, destination: Path) -> None:
        body = self._get_object(key)["Body"]
        try:
            write_file_atomically(Path(destination), body.iter_chunks(MIB))
        finally:
            body.close()

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self._full_key(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        root = f"{self.prefix}/" if self.prefix else ""
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=root + prefix):
            for item in page.get("Contents", []):
                key = item["Key"][len(root) :]
                try:
                    validate_key(key)
                except ValueError:  # written by something else sharing the bucket
                    continue
                yield ObjectInfo(key, item["Size"], item["LastModified"])

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._full_key(key))
        except ClientError as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def stored_checksum(self, key: str) -> str | None:
        """The base64 SHA-256 the server recorded (`digest-N` for multipart), or None."""
        try:
            head = self._client.head_object(
                Bucket=self.bucket, Key=self._full_key(key), ChecksumMode="ENABLED"
            )
        except ClientError as exc:
            if _is_missing(exc):
                raise ObjectNotFoundError(f"no object {key!r} in {self.url}") from exc
            raise
        return head.get("ChecksumSHA256")


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _composite_sha256(source: bytes | Path, part_size: int) -> str:
    """S3's multipart checksum: the SHA-256 of the concatenated SHA-256 digests of the parts."""
    part_digests = []
    stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    with stream:
        while part := stream.read(part_size):
            part_digests.append(hashlib.sha256(part).digest())
    return _b64(hashlib.sha256(b"".join(part_digests)).digest())
