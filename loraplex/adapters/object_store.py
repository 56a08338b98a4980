"""The object-store interface shared by the local-folder and S3 stores, and selection by URL.

Keys are `/`-separated relative paths made by the registry from database ids (never from user
input), but every store still checks them so that no key can reach outside its root or prefix.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

KEY_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
MAX_KEY_LENGTH = 900


class ObjectNotFoundError(LookupError):
    """No object is stored under the key."""


class ObjectIntegrityError(OSError):
    """The bytes the store holds are not the bytes that were written."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store's root or prefix
    size: int  # bytes
    last_modified: datetime  # timezone-aware


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative key (`a/b/c.json`), else raise ValueError."""
    if not isinstance(key, str) or not key:
        raise ValueError("object key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"object key longer than {MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if KEY_SEGMENT.fullmatch(segment) is None:
            raise ValueError(
                f"invalid object key {key!r}: segments must be non-empty, start with a letter, "
                "digit or '_', and use only letters, digits, '.', '_' and '-'"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key (optionally ending in `/`) or the start of one."""
    if prefix == "":
        return prefix
    validate_key(prefix.rstrip("/") or "_")
    if prefix.startswith("/") or prefix.endswith("//"):
        raise ValueError(f"invalid object key prefix {prefix!r}")
    return prefix


class ObjectStore(ABC):
    """Put, get, delete, list and test objects by key. Implementations are thread-safe."""

    url: str

    @abstractmethod
    def put(self, key: str, source: bytes | Path) -> None:
        """Store `source` (bytes or a local file) under `key`, replacing any older object whole."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; ObjectNotFoundError when absent."""

    @abstractmethod
    def get_to_file(self, key: str, destination: Path) -> None:
        """Write the object to `destination`, atomically; ObjectNotFoundError if absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; absent objects are not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    def delete_prefix(self, prefix: str) -> list[str]:
        """Delete every object under `prefix` (which must end in `/`); returns the keys deleted."""
        if not prefix.endswith("/"):
            raise ValueError(f"prefix to delete must end with '/': {prefix!r}")
        keys = [info.key for info in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return keys


def open_object_store(
    url: str, *, endpoint_url: str | None = None, region: str | None = None
) -> ObjectStore:
    """The store for `file:///abs/path` or `s3://bucket/prefix`.

    S3 options may also ride on the URL: `s3://bucket/prefix?endpoint_url=http://...&region=...`;
    keyword arguments win over them.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError(f"file object-store URL must be file:///absolute/path, got {url!r}")
        from loraplex.adapters.local_store import LocalObjectStore

        return LocalObjectStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(
                f"s3 object-store URL must name a bucket: s3://bucket/prefix, got {url!r}"
            )
        options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        unknown = sorted(set(options) - {"endpoint_url", "region"})
        if unknown:
            raise ValueError(f"unknown s3 URL option(s) {unknown}; use endpoint_url and region")
        from loraplex.adapters.s3_store import S3ObjectStore

        return S3ObjectStore(
            parts.netloc,
            parts.path.strip("/"),
            endpoint_url=endpoint_url or options.get("endpoint_url"),
            region=region or options.get("region"),
        )
    raise ValueError(
        f"unsupported object-store URL {url!r}: use file:///path or s3://bucket/prefix"
    )
