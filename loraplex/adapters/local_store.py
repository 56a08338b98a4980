"""An object store in a local folder: one file per key, written atomically.

Writers fill a hidden temporary file in the destination folder, fsync it and rename it over the
final name, so a reader or a crash sees either the old object or the whole new one, never a part.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from loraplex.adapters.object_store import (
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    validate_key,
    validate_prefix,
)

TEMP_PREFIX = ".tmp-"
COPY_CHUNK_BYTES = 1024 * 1024


def write_file_atomically(destination: Path, fill: BinaryIO | Iterable[bytes] | bytes) -> int:
    """Write `fill` to `destination` through a temp file + fsync + rename; returns bytes written."""
    descriptor, temp_name = _make_temp_file(destination.parent)
    written = 0
    try:
        with os.fdopen(descriptor, "wb") as temp:
            if isinstance(fill, bytes):
                temp.write(fill)
                written = len(fill)
            elif hasattr(fill, "read"):
                while chunk := fill.read(COPY_CHUNK_BYTES):
                    written += temp.write(chunk)
            else:
                for chunk in fill:
                    written += temp.write(chunk)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    fsync_directory(destination.parent)
    return written


def _make_temp_file(folder: Path) -> tuple[int, str]:
    # A concurrent delete may prune the folder between mkdir and mkstemp; recreate and retry.
    for _ in range(3):
        folder.mkdir(parents=True, exist_ok=True)
        try:
            return tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
        except FileNotFoundError:
            continue
    raise OSError(f"could not create a temporary file in {folder}")


def fsync_directory(folder: Path) -> None:
    """Make a rename in `folder` durable (the new directory entry survives a power loss)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class LocalObjectStore(ObjectStore):
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = self.root / validate_key(key)
        # The key check already forbids `..`; resolving also defeats symlinks planted in the root.
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"object key {key!r} resolves outside the store")
        return path

    def put(self, key: str, source: bytes | Path) -> None:
        path = self._path(key)
        if isinstance(source, bytes):
            write_file_atomically(path, source)
            return
        with open(source, "rb") as stream:
            write_file_atomically(path, stream)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"no object {key!r} in {self.url}") from exc

    def get_to_file(self, key: str, destination: Path) -> None:
        try:
            stream = open(self._path(key), "rb")  # noqa: SIM115 - closed below, after the copy
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFoundError(f"no object {key!r} in {self.url}") from exc
        with stream:
            write_file_atomically(Path(destination), stream)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._prune_empty_parents(path.parent)

    def _prune_empty_parents(self, folder: Path) -> None:
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone): stop climbing
                return
            folder = folder.parent

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        start = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not start.is_dir() or not start.resolve().is_relative_to(self.root):
            return iter(())
        found: list[ObjectInfo] = []
        for folder, subfolders, files in os.walk(start):
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue
                path = Path(folder, name)
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix) or path.is_symlink():
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:  # deleted while listing
                    continue
                found.append(
                    ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))
                )
        return iter(sorted(found, key=lambda info: info.key))

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()
