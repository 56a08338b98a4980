"""The local-disk tier of the adapter cache: a size-bounded LRU of verified adapter folders.

Each entry is a folder `v{version_id}-{sha256[:16]}` holding the two adapter files under their
fixed names. A fill downloads into a hidden `.partial-*` folder, checks both SHA-256 sums against
the registry row, and renames the folder into place, so a failed or interrupted fill never leaves
a half-written entry. Entries held by a reader are never evicted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loraplex.adapter_format.peft import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from loraplex.adapters.errors import AdapterFetchError
from loraplex.adapters.object_store import ObjectStore

if TYPE_CHECKING:  # the cache itself runs without the database packages
    from loraplex.adapters.models import AdapterVersion

ENTRY_NAME = re.compile(r"v([0-9]+)-([0-9a-f]{16})")
PARTIAL_PREFIX = ".partial-"
HASH_CHUNK_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class AdapterSource:
    """What the cache needs to fetch one immutable adapter version."""

    version_id: int  # AdapterVersion.id: versions never change, so the id names the bytes
    object_key: str  # object-store prefix holding the two files
    sha256: str  # of adapter_model.safetensors
    config_sha256: str  # of adapter_config.json
    size_bytes: int

    @classmethod
    def from_version(cls, version: AdapterVersion) -> AdapterSource:
        return cls(
            version_id=version.id,
            object_key=version.object_key,
            sha256=version.sha256,
            config_sha256=version.config_sha256,
            size_bytes=version.size_bytes,
        )

    @property
    def entry_name(self) -> str:
        return f"v{self.version_id}-{self.sha256[:16]}"


class CorruptEntryError(Exception):
    """A disk-cache file no longer matches its checksum."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def read_verified(folder: Path, source: AdapterSource) -> tuple[bytes, bytes]:
    """The config and weights bytes of an entry, after checking both SHA-256 sums."""
    try:
        config = (folder / ADAPTER_CONFIG_FILE).read_bytes()
        weights = (folder / ADAPTER_WEIGHTS_FILE).read_bytes()
    except FileNotFoundError as exc:
        raise CorruptEntryError(f"{folder.name} is missing a file") from exc
    for name, data, expected in (
        (ADAPTER_CONFIG_FILE, config, source.config_sha256),
        (ADAPTER_WEIGHTS_FILE, weights, source.sha256),
    ):
        if hashlib.sha256(data).hexdigest() != expected:
            raise CorruptEntryError(f"{folder.name}/{name} does not match its checksum")
    return config, weights


class DiskCache:
    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"disk cache size must be positive, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, tuple[str, int]] = OrderedDict()  # id -> (name, bytes)
        self._held: Counter[int] = Counter()
        self.root.mkdir(parents=True, exist_ok=True)
        self._load_index()

    def _load_index(self) -> None:
        found = []
        for child in self.root.iterdir():
            if child.name.startswith(PARTIAL_PREFIX):  # left by a process that died mid-fill
                shutil.rmtree(child, ignore_errors=True)
                continue
            match = ENTRY_NAME.fullmatch(child.name)
            if match is None or not child.is_dir():
                continue
            size = sum(f.stat().st_size for f in child.iterdir() if f.is_file())
            found.append((child.stat().st_mtime, int(match[1]), child.name, size))
        for _, version_id, name, size in sorted(found):
            self._entries[version_id] = (name, size)

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._entries.values())

    def __contains__(self, version_id: int) -> bool:
        with self._lock:
            return version_id in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @contextmanager
    def hold(self, source: AdapterSource) -> Iterator[Path | None]:
        """Keep the version's entry from eviction while held; yields its folder, or None."""
        with self._lock:
            self._held[source.version_id] += 1
            entry = self._entries.get(source.version_id)
            if entry is not None and entry[0] == source.entry_name:
                self._entries.move_to_end(source.version_id)
                path: Path | None = self.root / entry[0]
            else:
                path = None
        if path is not None:
            # The folder's mtime carries the LRU order across restarts (see _load_index).
            with contextlib.suppress(OSError):
                os.utime(path)
        try:
            yield path
        finally:
            with self._lock:
                self._held[source.version_id] -= 1
                if not self._held[source.version_id]:
                    del self._held[source.version_id]

    def fill(self, source: AdapterSource, store: ObjectStore) -> int:
        """Download and verify the version into the cache; returns the bytes downloaded.

        Call while holding the version, so that concurrent fills cannot evict it."""
        partial = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=self.root))
        try:
            size = 0
            for name, expected in (
                (ADAPTER_CONFIG_FILE, source.config_sha256),
                (ADAPTER_WEIGHTS_FILE, source.sha256),
            ):
                target = partial / name
                store.get_to_file(source.object_key + name, target)
                actual = file_sha256(target)
                if actual != expected:
                    raise AdapterFetchError(
                        f"checksum mismatch for {source.object_key}{name} in the object store: "
                        f"expected sha256 {expected}, got {actual}"
                    )
                size += target.stat().st_size
            self.discard(source.version_id)
            entry = self.root / source.entry_name
            shutil.rmtree(entry, ignore_errors=True)  # a stale folder the index did not know
            os.replace(partial, entry)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        with self._lock:
            self._entries[source.version_id] = (source.entry_name, size)
            victims = self._pick_victims()
        for name in victims:
            shutil.rmtree(self.root / name, ignore_errors=True)
        return size

    def _pick_victims(self) -> list[str]:
        total = sum(size for _, size in self._entries.values())
        victims = []
        for version_id in list(self._entries):
            if total <= self.max_bytes:
                break
            if self._held[version_id]:
                continue
            name, size = self._entries.pop(version_id)
            victims.append(name)
            total -= size
        return victims

    def discard(self, version_id: int) -> None:
        """Remove the version's entry (after corruption, or when the version is deleted)."""
        with self._lock:
            entry = self._entries.pop(version_id, None)
        if entry is not None:
            shutil.rmtree(self.root / entry[0], ignore_errors=True)
