"""The cache's CUDA path. Needs only the engine's packages, so it runs on the GPU machine."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load

from loraplex.adapters.cache import AdapterCache
from tests.adapters.support import publish


@pytest.mark.gpu
def test_cpu_tensors_are_pinned_and_copy_to_the_gpu(local_store, peft_adapter, tmp_path):
    source = publish(local_store, 1, peft_adapter)
    cache = AdapterCache(
        local_store, disk_dir=tmp_path / "disk", disk_max_bytes=10**8, cpu_max_entries=2
    )
    try:
        assert cache.pin_memory
        loaded = cache.get(source)
        assert all(tensor.is_pinned() for tensor in loaded.tensors.values())
        on_gpu = {name: t.to("cuda", non_blocking=True) for name, t in loaded.tensors.items()}
        torch.cuda.synchronize()
        expected = load(peft_adapter.weights)
        assert all(torch.equal(on_gpu[name].cpu(), expected[name]) for name in expected)
    finally:
        cache.close()
