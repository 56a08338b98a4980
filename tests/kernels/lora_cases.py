"""Random multi-LoRA batches for the kernel tests and the checks run on them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraplex.kernels import LoRAKernelMeta, lora_expand, lora_shrink
from loraplex.kernels.reference import lora_expand_ref, lora_shrink_ref
from tests.kernels.paged_cases import relative_error

TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}


@dataclass
class LoRABatch:
    x: torch.Tensor  # [T, in]
    lora_a: tuple[torch.Tensor, ...]  # per slice [num_slots, R, in]
    lora_b: tuple[torch.Tensor, ...]  # per slice [num_slots, out_i, R]
    token_lora: torch.Tensor  # [T] int32
    slice_offsets: tuple[int, ...]
    out_features: int  # columns of the fused output (wider than the slices together)


def token_slots(
    num_tokens: int,
    num_adapters: int,
    num_slots: int,
    *,
    prefill: bool,
    base_every: int = 0,
    seed: int = 0,
) -> torch.Tensor:
    """Slots of a batch using `num_adapters` distinct slots (scattered over the slot range):
    long runs of one slot for prefill, a random slot per token for decode; every
    `base_every`-th token uses the base model (-1)."""
    generator = torch.Generator().manual_seed(seed)
    used = torch.randperm(num_slots, generator=generator)[:num_adapters]
    if prefill:
        cuts = torch.sort(torch.randperm(num_tokens - 1, generator=generator)[: num_adapters - 1])
        runs = torch.zeros(num_tokens, dtype=torch.long)
        runs[cuts.values + 1] = 1
        slots = used[torch.cumsum(runs, 0)]
    else:
        slots = used[torch.randint(0, num_adapters, (num_tokens,), generator=generator)]
        slots[:num_adapters] = used  # every adapter appears at least once
    slots = slots.to(torch.int32)
    if base_every:
        slots[::base_every] = -1
    return slots


def make_lora_batch(
    num_tokens: int,
    in_features: int,
    slice_widths: tuple[int, ...],
    rank: int,
    num_adapters: int,
    *,
    num_slots: int,
    dtype: torch.dtype,
    prefill: bool,
    base_every: int = 0,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> LoRABatch:
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(dtype).to(device)

    lora_a = tuple(
        rand(num_slots, rank, in_features, scale=in_features**-0.5) for _ in slice_widths
    )
    lora_b = tuple(rand(num_slots, width, rank, scale=rank**-0.5) for width in slice_widths)
    offsets, column = [], 3  # leave untouched columns before, between and after the slices
    for width in slice_widths:
        offsets.append(column)
        column += width + 5
    slots = token_slots(
        num_tokens, num_adapters, num_slots, prefill=prefill, base_every=base_every, seed=seed
    )
    return LoRABatch(
        x=rand(num_tokens, in_features),
        lora_a=lora_a,
        lora_b=lora_b,
        token_lora=slots.to(device),
        slice_offsets=tuple(offsets),
        out_features=column,
    )


def check_shrink(batch: LoRABatch, prefill: bool, config=None, y_dtype=torch.float32):
    """Run lora_shrink into a NaN-poisoned y, compare with the reference; returns (y_ref, meta)."""
    meta = LoRAKernelMeta.build(batch.token_lora, batch.lora_a[0].shape[0], prefill=prefill)
    shape = (len(batch.lora_a), batch.x.shape[0], batch.lora_a[0].shape[1])
    y = torch.full(shape, float("nan"), dtype=y_dtype, device=batch.x.device)
    y_ref = y.clone()
    assert lora_shrink(batch.x, batch.lora_a, meta, y, config=config) is y
    lora_shrink_ref(batch.x, batch.lora_a, batch.token_lora, y_ref)
    lora_rows = batch.token_lora >= 0
    if lora_rows.any():
        error = relative_error(y[:, lora_rows], y_ref[:, lora_rows])
        assert error < TOLERANCE[batch.x.dtype], f"relative error {error:.2e}"
    base_rows = y[:, ~lora_rows]
    assert (base_rows.isnan() | (base_rows == 0)).all(), "base-model rows: untouched or zero"
    return y_ref, meta


def check_expand(batch: LoRABatch, prefill: bool, config=None):
    """Run lora_expand after a shrink and compare the update, the untouched rows and columns."""
    y, meta = check_shrink(batch, prefill)
    y = y.nan_to_num(1e4)  # rows the shrink never wrote must not leak into the output
    generator = torch.Generator().manual_seed(1)
    before = torch.randn(batch.x.shape[0], batch.out_features, generator=generator)
    before = before.to(batch.x.dtype).to(batch.x.device)
    out, out_ref = before.clone(), before.clone()
    assert lora_expand(y, batch.lora_b, meta, out, batch.slice_offsets, config=config) is out
    lora_expand_ref(y, batch.lora_b, batch.token_lora, out_ref, batch.slice_offsets)
    lora_rows = batch.token_lora >= 0
    if lora_rows.any():
        delta = (out.float() - before.float())[lora_rows]
        delta_ref = (out_ref.float() - before.float())[lora_rows]
        error = relative_error(delta, delta_ref)
        assert error < TOLERANCE[batch.x.dtype], f"relative error of the update {error:.2e}"
    assert torch.equal(out[~lora_rows], before[~lora_rows]), "base-model rows must stay"
    in_slice = torch.zeros(batch.out_features, dtype=torch.bool)
    for b, offset in zip(batch.lora_b, batch.slice_offsets, strict=True):
        in_slice[offset : offset + b.shape[1]] = True
    assert torch.equal(out[:, ~in_slice], before[:, ~in_slice]), "columns outside the slices"
