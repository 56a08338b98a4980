"""Counters of the adapter cache: hits and misses per tier, bytes moved, load latency."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

TIERS = ("cpu", "disk", "gpu")


@dataclass
class TierCounters:
    hits: int = 0
    misses: int = 0


@dataclass
class CacheStatsSnapshot:
    tiers: dict[str, TierCounters]  # "cpu", "disk", "gpu" -> hits / misses
    shared_waits: int  # requests that joined a fetch already in flight instead of starting one
    failed_fetches: int  # fetches that ended in an error (every waiter got it)
    corrupt_disk_entries: int  # disk-cache entries whose checksum no longer matched
    bytes_downloaded: int  # from the object store into the disk cache
    bytes_loaded: int  # from disk into CPU memory
    loads: int  # completed fetches (disk hits and misses)
    load_seconds_total: float
    load_seconds_max: float

    @property
    def load_seconds_mean(self) -> float:
        return self.load_seconds_total / self.loads if self.loads else 0.0


@dataclass
class CacheStats:
    """Thread-safe counters; `snapshot()` returns a consistent copy."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _tiers: dict[str, TierCounters] = field(
        default_factory=lambda: {tier: TierCounters() for tier in TIERS}
    )
    _shared_waits: int = 0
    _failed_fetches: int = 0
    _corrupt_disk_entries: int = 0
    _bytes_downloaded: int = 0
    _bytes_loaded: int = 0
    _loads: int = 0
    _load_seconds_total: float = 0.0
    _load_seconds_max: float = 0.0

    def record_lookup(self, tier: str, *, hit: bool) -> None:
        with self._lock:
            counters = self._tiers[tier]
            if hit:
                counters.hits += 1
            else:
                counters.misses += 1

    def record_shared_wait(self) -> None:
        with self._lock:
            self._shared_waits += 1

    def record_failure(self) -> None:
        with self._lock:
            self._failed_fetches += 1

    def record_corrupt_disk_entry(self) -> None:
        with self._lock:
            self._corrupt_disk_entries += 1

    def record_download(self, nbytes: int) -> None:
        with self._lock:
            self._bytes_downloaded += nbytes

    def record_load(self, *, nbytes: int, seconds: float) -> None:
        with self._lock:
            self._bytes_loaded += nbytes
            self._loads += 1
            self._load_seconds_total += seconds
            self._load_seconds_max = max(self._load_seconds_max, seconds)

    def snapshot(self) -> CacheStatsSnapshot:
        with self._lock:
            return CacheStatsSnapshot(
                tiers={tier: TierCounters(c.hits, c.misses) for tier, c in self._tiers.items()},
                shared_waits=self._shared_waits,
                failed_fetches=self._failed_fetches,
                corrupt_disk_entries=self._corrupt_disk_entries,
                bytes_downloaded=self._bytes_downloaded,
                bytes_loaded=self._bytes_loaded,
                loads=self._loads,
                load_seconds_total=self._load_seconds_total,
                load_seconds_max=self._load_seconds_max,
            )
