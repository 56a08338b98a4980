"""Bringing a tenant's adapter version to the engine: registry row -> local disk -> engine CPU.

The registry's `AdapterCache` supplies the disk tier (download from the object store, checksum
verification, size-bounded LRU). Its own CPU tier is left out of this path: the engine keeps the
CPU copy it serves from (loaded from the disk folder in a worker thread, never on the step loop),
so an adapter is held once in CPU memory. A request holds its version's disk entry until it
finishes, so no fill of another adapter can evict the folder the engine may still read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from loraplex.adapters.cache import AdapterCache
from loraplex.adapters.disk_cache import AdapterSource, CorruptEntryError, read_verified
from loraplex.adapters.errors import AdapterFetchError
from loraplex.adapters.models import AdapterVersion
from loraplex.engine.async_engine import AsyncLLMEngine, EngineDeadError
from loraplex.lora_request import LoRARequest
from loraplex.platform.metrics import PlatformMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedAdapter:
    """A tenant's adapter version, detached from the database session."""

    tenant_id: int
    name: str
    version: int
    source: AdapterSource

    @classmethod
    def from_row(cls, tenant_id: int, name: str, row: AdapterVersion) -> ResolvedAdapter:
        return cls(tenant_id, name, row.version, AdapterSource.from_version(row))

    @property
    def version_id(self) -> int:
        return self.source.version_id

    @property
    def engine_name(self) -> str:
        return f"{self.tenant_id}/{self.name}:v{self.version}"


class AdapterLoader:
    def __init__(
        self, cache: AdapterCache, engine: AsyncLLMEngine, metrics: PlatformMetrics
    ) -> None:
        self.cache = cache
        self.engine = engine
        self.metrics = metrics
        self._fetches: dict[int, asyncio.Task[Path]] = {}
        # Versions whose disk entry was checked against its checksums by this process.
        self._verified: set[int] = set()

    @asynccontextmanager
    async def hold(self, adapter: ResolvedAdapter) -> AsyncIterator[LoRARequest]:
        """A LoRARequest for `adapter`, whose files stay on disk and whose tensors are in the
        engine's CPU memory when this yields."""
        source = adapter.source
        with self.cache.disk.hold(source) as folder:
            if folder is None or source.version_id not in self._verified:
                folder = await self._fetch_once(source, folder)
            request = LoRARequest(adapter.engine_name, source.version_id, str(folder))
            started = time.perf_counter()
            if await self.engine.add_lora(request):
                self.metrics.adapter_loaded("cpu", time.perf_counter() - started)
            yield request

    async def _fetch_once(self, source: AdapterSource, folder: Path | None) -> Path:
        # Concurrent requests for one version share one download.
        task = self._fetches.get(source.version_id)
        if task is None:
            task = asyncio.ensure_future(asyncio.to_thread(self._fill_or_verify, source, folder))
            self._fetches[source.version_id] = task
            task.add_done_callback(lambda _: self._fetches.pop(source.version_id, None))
        return await asyncio.shield(task)

    def _fill_or_verify(self, source: AdapterSource, folder: Path | None) -> Path:
        stats = self.cache.stats
        if folder is not None:
            try:
                read_verified(folder, source)
                stats.record_lookup("disk", hit=True)
                self._verified.add(source.version_id)
                return folder
            except CorruptEntryError:
                stats.record_corrupt_disk_entry()
                self.cache.disk.discard(source.version_id)
        stats.record_lookup("disk", hit=False)
        started = time.perf_counter()
        try:
            stats.record_download(self.cache.disk.fill(source, self.cache.store))
        except Exception as exc:
            stats.record_failure()
            if isinstance(exc, AdapterFetchError):
                raise
            raise AdapterFetchError(
                f"adapter version {source.version_id} could not be fetched: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self.metrics.adapter_loaded("disk", time.perf_counter() - started)
        self._verified.add(source.version_id)
        return self.cache.disk.root / source.entry_name

    async def forget(self, version_ids: Iterable[int]) -> None:
        """Drop deleted versions from the engine and the disk tier; requests that already hold
        one finish with it unchanged."""
        for version_id in version_ids:
            self._verified.discard(version_id)
            with suppress(EngineDeadError):  # a dead engine serves nothing anyway
                await self.engine.remove_lora(version_id)
            await asyncio.to_thread(self.cache.forget, version_id)
