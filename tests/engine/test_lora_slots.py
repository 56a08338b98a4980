"""The slot writer: an adapter's per-layer matrices land in the stacked slot buffers (what
each layer's LoRA wrapper reads) with zeros above its rank, in the layers and modules it does
not target, and nowhere else; a loaded adapter packs each module's layers back to back so the
writer stacks them without copying."""

import pytest
import torch

from loraplex import LLM, LoRARequest
from loraplex.engine.layers.lora import LORA_TARGETS, _stacked, module_stacks, write_lora_slot

from .peft_adapters import make_adapters


@pytest.fixture(scope="module")
def llm(tiny_model_dirs):
    return LLM(
        tiny_model_dirs["llama"],
        dtype="float32",
        device="cpu",
        enable_lora=True,
        max_loras=3,
        max_lora_rank=16,
        max_model_len=64,
    )


def _slot_weights(layers, slot):
    """{(layer, module): (A [R, in], B [out, R])} as the wrappers see slot `slot`."""
    out = {}
    for module, (path, index) in LORA_TARGETS.items():
        for (layer, wrapped_path), lora in layers.items():
            if wrapped_path == path:
                out[(layer, module)] = (lora.lora_a[index][slot], lora.lora_b[index][slot])
    return out


def test_stacking_is_a_view_only_for_back_to_back_tensors():
    buffer = torch.arange(24.0)
    back_to_back = [buffer[0:6].view(2, 3), buffer[6:12].view(2, 3)]
    stacked = _stacked(back_to_back)
    assert stacked.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
    assert torch.equal(stacked, torch.stack(back_to_back))
    apart = [buffer[0:6].view(2, 3), buffer[12:18].view(2, 3)]
    copied = _stacked(apart)
    assert copied.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr()
    assert torch.equal(copied, torch.stack(apart))


def test_a_loaded_adapter_stacks_every_module_without_copying(llm, tiny_model_dirs, tmp_path):
    folder = make_adapters(tiny_model_dirs["llama"], tmp_path, 1)[0]
    adapter = llm.llm_engine.lora_manager.get(LoRARequest("s", 31, str(folder)))
    storage = next(iter(adapter.weights.values()))[0].untyped_storage().data_ptr()
    stacks = module_stacks(adapter.weights)
    assert stacks and all(
        t.untyped_storage().data_ptr() == storage for s in stacks for t in (s.a, s.b)
    )


def test_partial_adapter_fills_its_layers_and_zeroes_the_rest(llm):
    layers = llm.llm_engine.model_runner.lora_layers
    num_layers = 1 + max(layer for layer, _ in layers)
    generator = torch.Generator().manual_seed(0)
    before = {k: (a.clone(), b.clone()) for k, (a, b) in _slot_weights(layers, 2).items()}
    for slot in (0, 1):  # dirty slots, to see the writer clear what the adapter lacks
        dirty = {
            key: (torch.randn(16, a.shape[1], generator=generator),
                  torch.randn(b.shape[0], 16, generator=generator))
            for key, (a, b) in _slot_weights(layers, slot).items()
        }  # fmt: skip
        write_lora_slot(layers, slot, dirty)
    rank = 4
    weights = {}
    for (layer, module), (a, b) in _slot_weights(layers, 0).items():
        if module in ("q_proj", "down_proj") and layer != num_layers - 1:
            weights[(layer, module)] = (
                torch.randn(rank, a.shape[1], generator=generator),
                torch.randn(b.shape[0], rank, generator=generator),
            )
    write_lora_slot(layers, 1, weights)
    for key, (a, b) in _slot_weights(layers, 1).items():
        if key in weights:
            want_a, want_b = weights[key]
            assert torch.equal(a[:rank], want_a) and torch.equal(b[:, :rank], want_b), key
            assert not a[rank:].any() and not b[:, rank:].any(), key
        else:
            assert not a.any() and not b.any(), key
    # The slot written before is intact, and the untouched slot still holds zeros.
    assert all(a.any() for a, _ in _slot_weights(layers, 0).values())
    for key, (a, b) in _slot_weights(layers, 2).items():
        assert torch.equal(a, before[key][0]) and torch.equal(b, before[key][1])
