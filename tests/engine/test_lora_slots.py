"""The slot writer: an adapter's weights land in the stacked slot buffers (what each layer's
LoRA wrapper reads) with zeros above its rank, in the layers and modules it does not target,
and nowhere else."""

import pytest
import torch

from loraplex import LLM
from loraplex.engine.layers.lora import LORA_TARGETS, ModuleStack, write_lora_slot


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


def _random_stacks(layers, modules, layer_ids, rank, generator):
    shapes = _slot_weights(layers, 0)
    stacks = []
    for module in modules:
        a, b = shapes[(layer_ids[0], module)]
        count = len(layer_ids)
        stacks.append(
            ModuleStack(
                module,
                tuple(layer_ids),
                torch.randn(count, rank, a.shape[1], generator=generator),
                torch.randn(count, b.shape[0], rank, generator=generator),
            )
        )
    return stacks


def test_partial_adapter_fills_its_layers_and_zeroes_the_rest(llm):
    layers = llm.llm_engine.model_runner.lora_layers
    all_layers = sorted({layer for layer, _ in layers})
    generator = torch.Generator().manual_seed(0)
    before = {k: (a.clone(), b.clone()) for k, (a, b) in _slot_weights(layers, 2).items()}
    for slot in (0, 1):  # full-rank adapters on every module first, to see what gets cleared
        write_lora_slot(
            layers, slot, _random_stacks(layers, LORA_TARGETS, all_layers, 16, generator)
        )
    rank = 4
    partial = _random_stacks(layers, ["q_proj", "down_proj"], all_layers[:-1], rank, generator)
    write_lora_slot(layers, 1, partial)
    wanted = {
        (layer, stack.module): (stack.a[i], stack.b[i])
        for stack in partial
        for i, layer in enumerate(stack.layers)
    }
    for key, (a, b) in _slot_weights(layers, 1).items():
        if key in wanted:
            want_a, want_b = wanted[key]
            assert torch.equal(a[:rank], want_a) and torch.equal(b[:, :rank], want_b), key
            assert not a[rank:].any() and not b[:, rank:].any(), key
        else:
            assert not a.any() and not b.any(), key
    # The slot written before keeps its adapter; the slot never written still holds zeros.
    assert all(a.any() and b.any() for a, b in _slot_weights(layers, 0).values())
    for key, (a, b) in _slot_weights(layers, 2).items():
        assert torch.equal(a, before[key][0]) and torch.equal(b, before[key][1])
