"""LoRA around the engine's linear layers: per-slot A and B buffers for each output slice.

A fused projection (q/k/v, gate/up) keeps one buffer pair per slice, so one shrink and one
expand launch serve all its slices. Slots hold adapters already scaled and in the model dtype;
tokens whose slot is -1 (base model) get nothing added. With no adapter in the batch the
forward context carries no LoRA metadata and the layer costs nothing extra.

Under tensor parallelism (the S-LoRA scheme) a column-parallel layer keeps all of A and its rank's
rows of B; a row-parallel layer keeps its rank's columns of A and all of B, and sums the shrink
result over the ranks before the expand, so every rank adds what a single device would.
"""

from __future__ import annotations

import torch
from torch import nn

from loraplex.engine.context import get_forward_context
from loraplex.engine.distributed import all_reduce
from loraplex.engine.layers.linear import LinearBase, RowParallelLinear
from loraplex.kernels.reference import lora_expand_ref, lora_shrink_ref

# (layer index, checkpoint module such as "q_proj") -> (A [r, in], B [out, r]) at full size.
SlotWeights = dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]

# Checkpoint module -> (attribute path of the engine's fused layer, slice index in it).
LORA_TARGETS: dict[str, tuple[str, int]] = {
    "q_proj": ("self_attn.qkv_proj", 0),
    "k_proj": ("self_attn.qkv_proj", 1),
    "v_proj": ("self_attn.qkv_proj", 2),
    "o_proj": ("self_attn.o_proj", 0),
    "gate_proj": ("mlp.gate_up_proj", 0),
    "up_proj": ("mlp.gate_up_proj", 1),
    "down_proj": ("mlp.down_proj", 0),
}


class LoRALinear(nn.Module):
    def __init__(self, base: LinearBase, num_slots: int, max_rank: int) -> None:
        super().__init__()
        self.base = base
        sizes = list(getattr(base, "output_sizes", [base.out_features]))
        weight = base.weight
        self.slice_offsets = tuple(sum(sizes[:i]) for i in range(len(sizes)))
        like = {"dtype": base.compute_dtype, "device": weight.device}  # bf16 over an fp8 base
        self.lora_a = tuple(
            torch.zeros(num_slots, max_rank, base.in_features, **like) for _ in sizes
        )
        self.lora_b = tuple(torch.zeros(num_slots, size, max_rank, **like) for size in sizes)
        self.reduce_shrink = isinstance(base, RowParallelLinear) and base.tp_size > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        meta = get_forward_context().lora
        if meta is None:
            return out
        x = x.contiguous()
        y = torch.empty(len(self.lora_a), x.shape[0], self.lora_a[0].shape[1], device=x.device)
        if x.is_cuda:
            from loraplex import kernels

            kernels.lora_shrink(x, self.lora_a, meta, y)
            if self.reduce_shrink:
                all_reduce(y)
            kernels.lora_expand(y, self.lora_b, meta, out, self.slice_offsets)
        else:
            lora_shrink_ref(x, self.lora_a, meta.token_lora, y)
            if self.reduce_shrink:
                all_reduce(y)
            lora_expand_ref(y, self.lora_b, meta.token_lora, out, self.slice_offsets)
        return out


def write_lora_slot(
    layers: dict[tuple[int, str], LoRALinear],
    slot: int,
    weights: SlotWeights,
) -> None:
    """Replace slot `slot` of every layer with one adapter's weights; layers the adapter does
    not target, and ranks above the adapter's, get zeros. A handful of launches in all: one
    host-to-GPU copy of the adapter's buffer, then multi-tensor zero and copy."""
    if not layers:
        return
    device = next(iter(layers.values())).lora_a[0].device
    weights = _on_device(weights, device)
    untouched = {(key, i) for key, layer in layers.items() for i in range(len(layer.lora_a))}
    targets: list[torch.Tensor] = []
    sources: list[torch.Tensor] = []
    zeros: list[torch.Tensor] = []
    for (index, module), (a, b) in weights.items():
        path, slice_index = LORA_TARGETS[module]
        layer = layers[(index, path)]
        a = layer.base.shard_input(a)
        b = layer.base.shard_output(b, slice_index)
        rank = a.shape[0]
        targets += [
            layer.lora_a[slice_index][slot, :rank],
            layer.lora_b[slice_index][slot, :, :rank],
        ]
        sources += [a, b]
        untouched.discard(((index, path), slice_index))
        zeros += [layer.lora_a[slice_index][slot, rank:], layer.lora_b[slice_index][slot, :, rank:]]
    for key, slice_index in untouched:
        zeros += [layers[key].lora_a[slice_index][slot], layers[key].lora_b[slice_index][slot]]
    zeros = [t for t in zeros if t.numel()]
    if zeros:
        torch._foreach_zero_(zeros)
    if targets:
        torch._foreach_copy_(targets, sources)


def _on_device(weights: SlotWeights, device: torch.device) -> SlotWeights:
    """Tensors that are views of one CPU buffer (a loaded adapter) as views of one device copy
    of it: a single transfer instead of one per tensor."""
    tensors = [t for pair in weights.values() for t in pair]
    if device.type == "cpu" or not tensors or any(t.device.type != "cpu" for t in tensors):
        return weights
    storage = tensors[0].untyped_storage()
    if any(t.untyped_storage().data_ptr() != storage.data_ptr() for t in tensors):
        return weights
    flat = torch.empty(0, dtype=tensors[0].dtype).set_(storage)
    staged = flat.to(device, non_blocking=True)
    return {
        key: tuple(staged.as_strided(t.shape, t.stride(), t.storage_offset()) for t in pair)
        for key, pair in weights.items()
    }


def apply_lora(
    model: nn.Module, num_slots: int, max_rank: int
) -> dict[tuple[int, str], LoRALinear]:
    """Wrap every LoRA-capable layer of each decoder layer in place; a layer without one of
    the targets (the MLP of a mixture-of-experts layer has no gate_up_proj) is left as it is.

    Returns the wrappers keyed by (layer index, fused attribute path) for the slot loader.
    """
    wrapped: dict[tuple[int, str], LoRALinear] = {}
    for index, layer in enumerate(model.model.layers):
        for path in dict.fromkeys(target for target, _ in LORA_TARGETS.values()):
            parent_path, name = path.rsplit(".", 1)
            parent = layer.get_submodule(parent_path)
            base = getattr(parent, name, None)
            if not isinstance(base, LinearBase):
                continue
            lora = LoRALinear(base, num_slots, max_rank)
            setattr(parent, name, lora)
            wrapped[(index, path)] = lora
    return wrapped
