"""The adapter cache: object store -> local disk -> CPU memory -> the engine's GPU slots.

`get` returns an adapter's tensors in CPU memory (pinned when CUDA is present), fetching through
the tiers on a miss. Fetches run on the cache's own worker threads, never on the caller's (the
engine's or the event loop's); concurrent requests for one version share one fetch, and a failed
fetch fails every waiting request with an `AdapterFetchError` and leaves nothing half-written.
The last hop, into a GPU slot, is the engine's: `activate` hands it a `LoadedAdapter` through
`add_lora`, the one method the engine must provide (`LoraTarget`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from loraplex.adapter_format.peft import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    LoraAdapterSpec,
    validate_adapter_files,
)
from loraplex.adapters.cache_stats import CacheStats, CacheStatsSnapshot
from loraplex.adapters.disk_cache import (
    AdapterSource,
    CorruptEntryError,
    DiskCache,
    read_verified,
)
from loraplex.adapters.errors import AdapterFetchError
from loraplex.adapters.object_store import ObjectStore

if TYPE_CHECKING:
    import torch

    from loraplex.platform.settings import Settings


@dataclass(frozen=True)
class LoadedAdapter:
    """What the engine receives for one adapter version."""

    version_id: int  # stable integer id (use as the engine's lora_int_id)
    spec: LoraAdapterSpec  # rank, alpha, rsLoRA, target modules, (layer, module) -> A/B names
    tensors: dict[str, torch.Tensor]  # every tensor of the safetensors file, on the CPU
    path: Path  # disk-cache folder with the two files; it may be evicted later, the tensors stay
    nbytes: int  # bytes of tensor data


class LoraTarget(Protocol):
    """The engine side of the hand-off (its multi-LoRA `add_lora`)."""

    def add_lora(self, adapter: LoadedAdapter) -> bool:
        """Put the adapter in a GPU slot; True if it was loaded, False if already resident."""
        ...


def _default_pin_memory() -> bool:
    import torch

    return torch.cuda.is_available()


class AdapterCache:
    def __init__(
        self,
        store: ObjectStore,
        *,
        disk_dir: Path,
        disk_max_bytes: int,
        cpu_max_entries: int,
        max_rank: int | None = None,
        fetch_workers: int = 4,
        pin_memory: bool | None = None,
    ) -> None:
        if cpu_max_entries < 1:
            raise ValueError(f"cpu_max_entries must be at least 1, got {cpu_max_entries}")
        self.store = store
        self.disk = DiskCache(disk_dir, disk_max_bytes)
        self.cpu_max_entries = cpu_max_entries
        self.max_rank = max_rank
        self.pin_memory = _default_pin_memory() if pin_memory is None else pin_memory
        self.stats = CacheStats()
        # Reentrant: a future that fails at once runs its done-callback inside `fetch`.
        self._lock = threading.RLock()
        self._cpu: OrderedDict[int, LoadedAdapter] = OrderedDict()
        self._inflight: dict[int, Future[LoadedAdapter]] = {}
        self._pool = ThreadPoolExecutor(
            max_workers=fetch_workers, thread_name_prefix="adapter-fetch"
        )

    @classmethod
    def from_settings(cls, settings: Settings, store: ObjectStore) -> AdapterCache:
        assert settings.adapter_cache_dir is not None  # derived from data_dir when unset
        return cls(
            store,
            disk_dir=settings.adapter_cache_dir,
            disk_max_bytes=settings.adapter_disk_cache_bytes,
            cpu_max_entries=settings.adapter_cpu_cache_entries,
            max_rank=settings.max_lora_rank,
        )

    def fetch(self, source: AdapterSource) -> Future[LoadedAdapter]:
        """A future of the loaded adapter; starts a fetch only if none is running for it."""
        with self._lock:
            loaded = self._cpu.get(source.version_id)
            if loaded is not None:
                self._cpu.move_to_end(source.version_id)
                self.stats.record_lookup("cpu", hit=True)
                done: Future[LoadedAdapter] = Future()
                done.set_result(loaded)
                return done
            running = self._inflight.get(source.version_id)
            if running is not None:
                self.stats.record_shared_wait()
                return running
            self.stats.record_lookup("cpu", hit=False)
            future = self._pool.submit(self._load, source)
            self._inflight[source.version_id] = future
            future.add_done_callback(lambda _: self._forget_inflight(source.version_id))
            return future

    def _forget_inflight(self, version_id: int) -> None:
        with self._lock:
            self._inflight.pop(version_id, None)

    def get(self, source: AdapterSource, timeout: float | None = None) -> LoadedAdapter:
        """Block until the adapter is in CPU memory (TimeoutError after `timeout` seconds)."""
        return self.fetch(source).result(timeout)

    async def get_async(self, source: AdapterSource) -> LoadedAdapter:
        return await asyncio.wrap_future(self.fetch(source))

    def activate(
        self, source: AdapterSource, engine: LoraTarget, timeout: float | None = None
    ) -> LoadedAdapter:
        """Bring the adapter into CPU memory, then hand it to the engine's GPU slots."""
        return self._hand_to(engine, self.get(source, timeout))

    async def activate_async(self, source: AdapterSource, engine: LoraTarget) -> LoadedAdapter:
        return self._hand_to(engine, await self.get_async(source))

    def _hand_to(self, engine: LoraTarget, loaded: LoadedAdapter) -> LoadedAdapter:
        added = engine.add_lora(loaded)
        self.stats.record_lookup("gpu", hit=not added)
        return loaded

    def cpu_version_ids(self) -> list[int]:
        """Versions in CPU memory, least recently used first."""
        with self._lock:
            return list(self._cpu)

    def forget(self, version_id: int) -> None:
        """Drop a version from the CPU and disk tiers (e.g. after it was deleted)."""
        with self._lock:
            self._cpu.pop(version_id, None)
        self.disk.discard(version_id)

    def snapshot(self) -> CacheStatsSnapshot:
        return self.stats.snapshot()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _load(self, source: AdapterSource) -> LoadedAdapter:
        started = time.perf_counter()
        try:
            loaded = self._load_through_disk(source)
        except Exception as exc:
            self.stats.record_failure()
            if isinstance(exc, AdapterFetchError):
                raise
            raise AdapterFetchError(
                f"adapter version {source.version_id} ({source.object_key}) could not be "
                f"fetched: {type(exc).__name__}: {exc}"
            ) from exc
        with self._lock:
            self._cpu[source.version_id] = loaded
            while len(self._cpu) > self.cpu_max_entries:
                self._cpu.popitem(last=False)
        self.stats.record_load(nbytes=loaded.nbytes, seconds=time.perf_counter() - started)
        return loaded

    def _load_through_disk(self, source: AdapterSource) -> LoadedAdapter:
        with self.disk.hold(source) as folder:
            weights = None
            if folder is not None:
                try:
                    _, weights = read_verified(folder, source)
                except CorruptEntryError:
                    self.stats.record_corrupt_disk_entry()
                    self.disk.discard(source.version_id)
            self.stats.record_lookup("disk", hit=weights is not None)
            if weights is None:
                self.stats.record_download(self.disk.fill(source, self.store))
                folder = self.disk.root / source.entry_name
                weights = (folder / ADAPTER_WEIGHTS_FILE).read_bytes()  # verified by the fill
            assert folder is not None
            spec = validate_adapter_files(
                folder / ADAPTER_CONFIG_FILE,
                folder / ADAPTER_WEIGHTS_FILE,
                base=None,
                max_rank=self.max_rank,
            )
        return self._to_cpu_tensors(source, spec, weights, folder)

    def _to_cpu_tensors(
        self, source: AdapterSource, spec: LoraAdapterSpec, weights: bytes, folder: Path
    ) -> LoadedAdapter:
        from safetensors.torch import load

        tensors = load(weights)
        if self.pin_memory:
            # Page-locked memory lets the engine copy to the GPU asynchronously.
            tensors = {name: tensor.pin_memory() for name, tensor in tensors.items()}
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        return LoadedAdapter(source.version_id, spec, tensors, folder, nbytes)
