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

from dataclasses import dataclass, replace

import torch
from torch import nn

from loraplex.engine.context import get_forward_context
from loraplex.engine.distributed import all_reduce
from loraplex.engine.layers.fp8 import Fp8Activation
from loraplex.engine.layers.linear import LinearBase, RowParallelLinear
from loraplex.kernels.reference import lora_expand_ref, lora_shrink_ref

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


def output_slices(base: LinearBase) -> list[int]:
    """Sizes of the output slices of `base` on this rank (one for an unfused layer)."""
    return list(getattr(base, "output_sizes", [base.out_features]))


class LoRALinear(nn.Module):
    """`base` plus the LoRA product of each token's slot. `lora_a` / `lora_b` hold, per output
    slice, the slots' A [slots, rank, in] and B [slots, out, rank] (views of the per-module
    stacks `apply_lora` allocates)."""

    def __init__(
        self, base: LinearBase, lora_a: tuple[torch.Tensor, ...], lora_b: tuple[torch.Tensor, ...]
    ) -> None:
        super().__init__()
        self.base = base
        sizes = output_slices(base)
        self.slice_offsets = tuple(sum(sizes[:i]) for i in range(len(sizes)))
        self.lora_a = lora_a
        self.lora_b = lora_b
        self.reduce_shrink = isinstance(base, RowParallelLinear) and base.tp_size > 1

    @property
    def takes_fp8(self) -> bool:
        return self.base.takes_fp8

    def forward(self, x: torch.Tensor | Fp8Activation) -> torch.Tensor:
        out = self.base(x)
        meta = get_forward_context().lora
        if meta is None:
            return out
        if isinstance(x, Fp8Activation):  # the adapters apply in the model dtype
            x = x.x
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


@dataclass(frozen=True)
class ModuleSlots:
    """One checkpoint module's slot buffers across the layers that have it: A
    [layers, slots, rank, in] and B [layers, slots, out, rank] on this rank, the layer
    indices in order, and a layer to shard full-size tensors with (all shard alike)."""

    layers: tuple[int, ...]
    a: torch.Tensor
    b: torch.Tensor
    base: LinearBase
    slice_index: int


class LoRALayers(dict):
    """The LoRA wrappers keyed by (layer index, fused attribute path), and `modules`: each
    checkpoint module's stacked slot buffers, which the wrappers' buffers are views of, so an
    adapter goes into a slot in a few launches per module rather than two per layer."""

    def __init__(self, wrapped: dict[tuple[int, str], LoRALinear], modules: dict) -> None:
        super().__init__(wrapped)
        self.modules: dict[str, ModuleSlots] = modules


@dataclass(frozen=True)
class ModuleStack:
    """One adapter's weights for one checkpoint module (such as "q_proj"): A [layers, r, in]
    and B [layers, out, r] at full size with the scaling folded into B, for the layers listed
    (ascending)."""

    module: str
    layers: tuple[int, ...]
    a: torch.Tensor
    b: torch.Tensor


# An adapter's weights, module by module.
SlotWeights = list[ModuleStack]


def write_lora_slot(layers: LoRALayers, slot: int, weights: SlotWeights) -> None:
    """Replace slot `slot` of every layer with one adapter's weights; layers and modules the
    adapter does not target, and ranks above the adapter's, get zeros. On a GPU: one
    host-to-GPU copy of the adapter's buffer, then a copy and a zeroing per module."""
    if not layers.modules:
        return
    device = next(iter(layers.modules.values())).a.device
    targets: list[torch.Tensor] = []
    sources: list[torch.Tensor] = []
    zeros: list[torch.Tensor] = []
    written = set()
    for stack in _on_device(weights, device):
        slots = layers.modules[stack.module]
        written.add(stack.module)
        rank = stack.a.shape[1]
        a = slots.base.shard_input(stack.a)
        b = slots.base.shard_output(stack.b.transpose(0, 1), slots.slice_index).transpose(0, 1)
        if stack.layers == slots.layers:
            targets += [slots.a[:, slot, :rank], slots.b[:, slot, :, :rank]]
            sources += [a, b]
        else:  # the adapter leaves some layers out (PEFT's layers_to_transform)
            for i, layer in enumerate(stack.layers):
                at = slots.layers.index(layer)
                targets += [slots.a[at, slot, :rank], slots.b[at, slot, :, :rank]]
                sources += [a[i], b[i]]
            missing = [at for at, layer in enumerate(slots.layers) if layer not in stack.layers]
            zeros += [t for at in missing for t in (slots.a[at, slot], slots.b[at, slot])]
        zeros += [slots.a[:, slot, rank:], slots.b[:, slot, :, rank:]]
    for module, slots in layers.modules.items():
        if module not in written:
            zeros += [slots.a[:, slot], slots.b[:, slot]]
    zeros = [t for t in zeros if t.numel()]
    if zeros:
        torch._foreach_zero_(zeros)
    if targets:
        torch._foreach_copy_(targets, sources)


def _on_device(stacks: list[ModuleStack], device: torch.device) -> list[ModuleStack]:
    """Stacks that are views of one CPU buffer (a loaded adapter) as views of one device copy
    of it: a single transfer instead of one per tensor."""
    tensors = [t for stack in stacks for t in (stack.a, stack.b)]
    if device.type == "cpu" or not tensors or any(t.device.type != "cpu" for t in tensors):
        return stacks
    storage = tensors[0].untyped_storage()
    if any(t.untyped_storage().data_ptr() != storage.data_ptr() for t in tensors):
        return [replace(s, a=s.a.to(device), b=s.b.to(device)) for s in stacks]
    flat = torch.empty(0, dtype=tensors[0].dtype).set_(storage)
    staged = flat.to(device, non_blocking=True)

    def moved(t: torch.Tensor) -> torch.Tensor:
        return staged.as_strided(t.shape, t.stride(), t.storage_offset())

    return [replace(s, a=moved(s.a), b=moved(s.b)) for s in stacks]


def apply_lora(model: nn.Module, num_slots: int, max_rank: int) -> LoRALayers:
    """Wrap every LoRA-capable layer of each decoder layer in place; a layer without one of
    the targets (the MLP of a mixture-of-experts layer has no gate_up_proj) is left as it is.

    Returns the wrappers and the stacked slot buffers for the slot loader.
    """
    found: dict[str, list[tuple[int, nn.Module, str, LinearBase]]] = {}
    for index, layer in enumerate(model.model.layers):
        for path in dict.fromkeys(target for target, _ in LORA_TARGETS.values()):
            parent_path, name = path.rsplit(".", 1)
            parent = layer.get_submodule(parent_path)
            base = getattr(parent, name, None)
            if isinstance(base, LinearBase):
                found.setdefault(path, []).append((index, parent, name, base))
    wrapped: dict[tuple[int, str], LoRALinear] = {}
    modules: dict[str, ModuleSlots] = {}
    for path, entries in found.items():
        first = entries[0][3]
        # bf16 over an fp8 base
        like = {"dtype": first.compute_dtype, "device": first.weight.device}
        count = len(entries)
        a_stacks = [
            torch.zeros(count, num_slots, max_rank, first.in_features, **like)
            for _ in output_slices(first)
        ]
        b_stacks = [
            torch.zeros(count, num_slots, size, max_rank, **like) for size in output_slices(first)
        ]
        for module, (target, slice_index) in LORA_TARGETS.items():
            if target == path:
                modules[module] = ModuleSlots(
                    tuple(index for index, *_ in entries),
                    a_stacks[slice_index],
                    b_stacks[slice_index],
                    first,
                    slice_index,
                )
        for i, (index, parent, name, base) in enumerate(entries):
            if base.in_features != first.in_features or output_slices(base) != output_slices(first):
                raise ValueError(
                    f"layer {index}'s {path} differs in shape from layer {entries[0][0]}'s"
                )
            lora = LoRALinear(base, tuple(a[i] for a in a_stacks), tuple(b[i] for b in b_stacks))
            setattr(parent, name, lora)
            wrapped[(index, path)] = lora
    return LoRALayers(wrapped, modules)
