from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest
import torch
from safetensors.torch import load

from loraplex.adapters.cache import AdapterCache, LoadedAdapter
from loraplex.adapters.disk_cache import AdapterSource
from loraplex.adapters.errors import AdapterFetchError
from loraplex.adapters.tenants import create_tenant
from loraplex.platform.settings import Settings
from tests.adapters.conftest import RANK
from tests.adapters.registry_helpers import upload
from tests.adapters.support import publish


class RecordingStore:
    """Wraps a store: counts downloads per key, records the downloading thread, and can hold
    every download until released."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.downloads: Counter[str] = Counter()
        self.threads: set[str] = set()
        self.release = threading.Event()
        self.release.set()

    def get_to_file(self, key, destination):
        self.downloads[key] += 1
        self.threads.add(threading.current_thread().name)
        assert self.release.wait(timeout=30), "download was never released"
        self.inner.get_to_file(key, destination)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def wait_until(condition, message: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.01)


@pytest.fixture
def recording(local_store):
    return RecordingStore(local_store)


@pytest.fixture
def make_cache(recording, tmp_path):
    caches = []

    def make(**options) -> AdapterCache:
        settings = {"disk_max_bytes": 10**9, "cpu_max_entries": 8, "max_rank": 64} | options
        cache = AdapterCache(recording, disk_dir=tmp_path / "disk", **settings)
        caches.append(cache)
        return cache

    yield make
    for cache in caches:
        cache.close()


def test_get_fills_every_tier_once(make_cache, recording, peft_adapter):
    source = publish(recording, 1, peft_adapter)
    cache = make_cache()
    loaded = cache.get(source)
    expected = load(peft_adapter.weights)
    assert loaded.tensors.keys() == expected.keys()
    assert all(torch.equal(loaded.tensors[k], expected[k]) for k in expected)
    assert all(t.device.type == "cpu" for t in loaded.tensors.values())
    assert loaded.spec.rank == RANK and len(loaded.spec.pairs) == 14
    assert (loaded.path / "adapter_model.safetensors").read_bytes() == peft_adapter.weights
    assert loaded.nbytes == sum(t.numel() * t.element_size() for t in expected.values())
    assert cache.get(source) is loaded

    stats = cache.snapshot()
    assert (stats.tiers["cpu"].hits, stats.tiers["cpu"].misses) == (1, 1)
    assert (stats.tiers["disk"].hits, stats.tiers["disk"].misses) == (0, 1)
    assert stats.bytes_downloaded == source.size_bytes
    assert stats.bytes_loaded == loaded.nbytes
    assert stats.loads == 1 and 0 < stats.load_seconds_max == stats.load_seconds_mean
    assert sum(recording.downloads.values()) == 2


def test_concurrent_gets_share_one_download(make_cache, recording, peft_adapter):
    source = publish(recording, 1, peft_adapter)
    cache = make_cache()
    recording.release.clear()
    results: list[LoadedAdapter] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get(source))) for _ in range(16)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: cache.snapshot().shared_waits == 15, "requests did not all join the fetch")
    recording.release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 16 and all(result is results[0] for result in results)
    assert recording.downloads == Counter(
        {
            source.object_key + "adapter_config.json": 1,
            source.object_key + "adapter_model.safetensors": 1,
        }
    )
    assert cache.snapshot().loads == 1
    # The fetch ran on the cache's workers, not on any caller's thread.
    assert recording.threads and all(name.startswith("adapter-fetch") for name in recording.threads)


def test_cpu_tier_is_a_bounded_lru(make_cache, recording, peft_adapter):
    a, b, c = (publish(recording, i, peft_adapter) for i in (1, 2, 3))
    cache = make_cache(cpu_max_entries=2)
    cache.get(a)
    cache.get(b)
    cache.get(a)  # a becomes most recent, so b is the one to go
    cache.get(c)
    assert cache.cpu_version_ids() == [1, 3]
    downloads_before = sum(recording.downloads.values())
    cache.get(b)
    assert cache.cpu_version_ids() == [3, 2]
    assert sum(recording.downloads.values()) == downloads_before  # served from disk
    assert cache.snapshot().tiers["disk"].hits == 1


def test_disk_tier_is_a_size_bounded_lru(make_cache, recording, peft_adapter):
    a, b, c = (publish(recording, i, peft_adapter) for i in (1, 2, 3))
    cache = make_cache(cpu_max_entries=1, disk_max_bytes=2 * a.size_bytes + 100)
    cache.get(a)
    cache.get(b)
    cache.get(a)  # from disk: touches a
    cache.get(c)  # evicts b, the least recently used on disk
    assert 1 in cache.disk and 3 in cache.disk and 2 not in cache.disk
    assert cache.disk.total_bytes <= cache.disk.max_bytes
    assert sorted(p.name for p in cache.disk.root.iterdir()) == sorted([a.entry_name, c.entry_name])
    cache.get(b)
    assert recording.downloads[b.object_key + "adapter_model.safetensors"] == 2
    assert len(cache.disk) == 2


def test_corrupted_disk_file_is_detected_and_refetched(
    make_cache, recording, peft_adapter, tmp_path
):
    source = publish(recording, 1, peft_adapter)
    make_cache().get(source)
    weights = tmp_path / "disk" / source.entry_name / "adapter_model.safetensors"
    corrupted = bytearray(weights.read_bytes())
    corrupted[-1] ^= 0xFF  # a flipped bit in tensor data: the header still parses
    weights.write_bytes(bytes(corrupted))

    restarted = make_cache()  # a new process: CPU tier empty, disk tier found on disk
    loaded = restarted.get(source)
    stats = restarted.snapshot()
    assert stats.corrupt_disk_entries == 1
    assert stats.bytes_downloaded == source.size_bytes
    assert weights.read_bytes() == peft_adapter.weights
    expected = load(peft_adapter.weights)
    assert all(torch.equal(loaded.tensors[k], expected[k]) for k in expected)


def test_restart_reuses_the_disk_tier(make_cache, recording, peft_adapter, tmp_path):
    source = publish(recording, 1, peft_adapter)
    make_cache().get(source)
    (tmp_path / "disk" / ".partial-leftover").mkdir()  # from a process killed mid-fill
    restarted = make_cache()
    restarted.get(source)
    assert restarted.snapshot().tiers["disk"].hits == 1
    assert restarted.snapshot().bytes_downloaded == 0
    assert not (tmp_path / "disk" / ".partial-leftover").exists()


def test_failed_fetch_fails_every_waiter_and_leaves_nothing(make_cache, recording, peft_adapter):
    good = publish(recording, 1, peft_adapter)
    missing = AdapterSource(2, "tenants/1/adapters/2/v1/", good.sha256, good.config_sha256, 1)
    cache = make_cache()
    recording.release.clear()
    errors: list[Exception] = []

    def get():
        try:
            cache.get(missing)
        except AdapterFetchError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=get) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: cache.snapshot().shared_waits == 3, "requests did not all join the fetch")
    recording.release.set()
    for thread in threads:
        thread.join(timeout=30)
    assert len(errors) == 4 and len({id(e) for e in errors}) == 1
    assert "adapter version 2 (tenants/1/adapters/2/v1/) could not be fetched" in str(errors[0])
    assert "ObjectNotFoundError" in str(errors[0])
    assert list(cache.disk.root.iterdir()) == []
    assert cache.snapshot().failed_fetches == 1

    # The failure is not cached: once the bytes exist, the next request succeeds.
    recording.put(missing.object_key + "adapter_config.json", peft_adapter.config)
    recording.put(missing.object_key + "adapter_model.safetensors", peft_adapter.weights)
    fixed = AdapterSource(2, missing.object_key, good.sha256, good.config_sha256, good.size_bytes)
    assert cache.get(fixed).version_id == 2


def test_checksum_mismatch_from_the_store_is_refused(make_cache, recording, peft_adapter):
    source = publish(recording, 1, peft_adapter)
    tampered = AdapterSource(
        1, source.object_key, "0" * 64, source.config_sha256, source.size_bytes
    )
    cache = make_cache()
    with pytest.raises(AdapterFetchError, match="checksum mismatch.*adapter_model.safetensors"):
        cache.get(tampered)
    assert list(cache.disk.root.iterdir()) == []
    assert cache.cpu_version_ids() == []


class FakeEngine:
    """Stands in for the engine's multi-LoRA slots: remembers which versions it holds."""

    def __init__(self) -> None:
        self.resident: dict[int, LoadedAdapter] = {}

    def add_lora(self, adapter: LoadedAdapter) -> bool:
        if adapter.version_id in self.resident:
            return False
        self.resident[adapter.version_id] = adapter
        return True


def test_activate_hands_cpu_tensors_to_the_engine(make_cache, recording, peft_adapter):
    source = publish(recording, 1, peft_adapter)
    cache = make_cache()
    engine = FakeEngine()
    loaded = cache.activate(source, engine)
    assert engine.resident[1] is loaded
    cache.activate(source, engine)
    gpu = cache.snapshot().tiers["gpu"]
    assert (gpu.hits, gpu.misses) == (1, 1)


def test_async_get_does_not_block_the_event_loop(make_cache, recording, peft_adapter):
    source = publish(recording, 1, peft_adapter)
    cache = make_cache()
    recording.release.clear()
    engine = FakeEngine()

    async def scenario():
        ticks = 0
        task = asyncio.ensure_future(cache.activate_async(source, engine))
        while cache.snapshot().tiers["cpu"].misses == 0 or ticks < 5:
            ticks += 1
            await asyncio.sleep(0.01)
        assert not task.done()
        recording.release.set()
        return await asyncio.wait_for(task, timeout=30), ticks

    loaded, ticks = asyncio.run(scenario())
    assert ticks >= 5 and engine.resident[1] is loaded


def test_forget_drops_cpu_and_disk(make_cache, recording, peft_adapter):
    source = publish(recording, 1, peft_adapter)
    cache = make_cache()
    cache.get(source)
    cache.forget(1)
    assert cache.cpu_version_ids() == [] and 1 not in cache.disk
    assert not (cache.disk.root / source.entry_name).exists()


def test_source_from_registry_row_and_cache_from_settings(
    session, store, policy, peft_adapter, tmp_path
):
    tenant = create_tenant(session=session, name="acme")
    version = upload(session, store, tenant.id, policy, peft_adapter, "bot")
    source = AdapterSource.from_version(version)
    assert (source.version_id, source.object_key, source.sha256) == (
        version.id,
        version.object_key,
        version.sha256,
    )
    settings = Settings(data_dir=tmp_path / "data", adapter_cpu_cache_entries=3)
    cache = AdapterCache.from_settings(settings, store)
    try:
        assert cache.cpu_max_entries == 3 and cache.disk.root == tmp_path / "data" / "adapter-cache"
        assert cache.get(source).spec.rank == version.rank
    finally:
        cache.close()


def test_invalid_cache_sizes_are_refused(local_store, tmp_path):
    with pytest.raises(ValueError, match="cpu_max_entries"):
        AdapterCache(local_store, disk_dir=tmp_path, disk_max_bytes=1, cpu_max_entries=0)
    with pytest.raises(ValueError, match="disk cache size"):
        AdapterCache(local_store, disk_dir=tmp_path, disk_max_bytes=0, cpu_max_entries=1)


def test_disk_lru_order_survives_a_restart(make_cache, recording, peft_adapter):
    a, b, c = (publish(recording, i, peft_adapter) for i in (1, 2, 3))
    first = make_cache(cpu_max_entries=1)
    first.get(a)
    time.sleep(0.02)
    first.get(b)
    time.sleep(0.02)
    first.get(a)  # a is now the most recently used entry on disk
    restarted = make_cache(cpu_max_entries=1, disk_max_bytes=2 * a.size_bytes + 100)
    restarted.get(c)
    assert 1 in restarted.disk and 3 in restarted.disk and 2 not in restarted.disk
