"""LoRA expand: `out[:, slice] += y @ B^T` with each token's own adapter's B, in place.

Tiled like `lora_shrink`: programs take tiles of tokens sharing a slot and a block of output
columns of one slice, so the q/k/v or gate/up slices of a fused projection go in one launch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from loraplex.kernels.launch_config import for_element_size, launch_config
from loraplex.kernels.lora_meta import LORA_DTYPES, MAX_SLICES, LoRAKernelMeta
from loraplex.kernels.segments import tile_rows


@dataclass(frozen=True)
class ExpandConfig:
    block_m: int  # tokens of one slot per program
    block_n: int  # output features per program
    num_warps: int
    num_stages: int
    # One program per token (BGMV) instead of per tile of a slot's tokens (SGMV): fewer
    # dependent loads before streaming the weights, for decode batches of many adapters.
    per_token: bool = False

    @classmethod
    def for_meta(
        cls, meta: LoRAKernelMeta, device: torch.device, element_size: int = 2
    ) -> ExpandConfig:
        regime = "prefill" if meta.prefill else "decode"
        values = launch_config("lora_expand", regime, device)
        return cls(**for_element_size(values, element_size, "block_n"))


@triton.jit
def _lora_expand_kernel(
    y_ptr,
    b0_ptr,
    b1_ptr,
    b2_ptr,
    out_ptr,
    sorted_ids_ptr,
    segment_starts_ptr,
    segment_slots_ptr,
    tile_segments_ptr,
    n0,
    n1,
    n2,
    offset0,
    offset1,
    offset2,
    rank,
    stride_y_slice,
    stride_y_tok,
    stride_out_tok,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    EVEN_R: tl.constexpr,
):
    tile = tl.program_id(0)
    n_block = tl.program_id(1)
    slice_id = tl.program_id(2)
    b_ptr = b0_ptr
    n_out = n0
    offset = offset0
    if slice_id == 1:
        b_ptr = b1_ptr
        n_out = n1
        offset = offset1
    elif slice_id == 2:
        b_ptr = b2_ptr
        n_out = n2
        offset = offset2
    if n_block * BLOCK_N >= n_out:
        return
    segment = tl.load(tile_segments_ptr + tile)
    first, length = tile_rows(segment_starts_ptr, segment, tile, BLOCK_M)
    if first >= length:
        return
    slot = tl.load(segment_slots_ptr + segment)

    offs_m = first + tl.arange(0, BLOCK_M)
    m_mask = offs_m < length
    sorted_ptrs = sorted_ids_ptr + tl.load(segment_starts_ptr + segment) + offs_m
    tok = tl.load(sorted_ptrs, mask=m_mask, other=0).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank
    y_ptrs = y_ptr + slice_id * stride_y_slice + tok[:, None] * stride_y_tok + offs_r[None, :]
    y = tl.load(y_ptrs, mask=m_mask[:, None] & r_mask[None, :], other=0.0)
    offs_n = n_block * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < n_out
    b_ptrs = b_ptr + slot.to(tl.int64) * n_out * rank + offs_n[None, :] * rank + offs_r[:, None]
    if EVEN_R:
        b = tl.load(b_ptrs, mask=n_mask[None, :], other=0.0)
    else:
        b = tl.load(b_ptrs, mask=r_mask[:, None] & n_mask[None, :], other=0.0)
    delta = tl.dot(y.to(b.dtype), b)
    o_ptrs = out_ptr + tok[:, None] * stride_out_tok + offset + offs_n[None, :]
    o_mask = m_mask[:, None] & n_mask[None, :]
    base = tl.load(o_ptrs, mask=o_mask, other=0.0)
    tl.store(o_ptrs, (base.to(tl.float32) + delta).to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.jit
def _lora_expand_token_kernel(
    y_ptr,
    b0_ptr,
    b1_ptr,
    b2_ptr,
    out_ptr,
    token_slots_ptr,
    n0,
    n1,
    n2,
    offset0,
    offset1,
    offset2,
    rank,
    stride_y_slice,
    stride_y_tok,
    stride_out_tok,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    tok = tl.program_id(0)
    n_block = tl.program_id(1)
    slice_id = tl.program_id(2)
    b_ptr = b0_ptr
    n_out = n0
    offset = offset0
    if slice_id == 1:
        b_ptr = b1_ptr
        n_out = n1
        offset = offset1
    elif slice_id == 2:
        b_ptr = b2_ptr
        n_out = n2
        offset = offset2
    if n_block * BLOCK_N >= n_out:
        return
    slot = tl.load(token_slots_ptr + tok)
    if slot < 0:
        return
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank
    y_ptrs = y_ptr + slice_id * stride_y_slice + tok.to(tl.int64) * stride_y_tok + offs_r
    y = tl.load(y_ptrs, mask=r_mask, other=0.0).to(b_ptr.dtype.element_ty).to(tl.float32)
    offs_n = n_block * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < n_out
    b_ptrs = b_ptr + slot.to(tl.int64) * n_out * rank + offs_n[:, None] * rank + offs_r[None, :]
    b = tl.load(b_ptrs, mask=n_mask[:, None] & r_mask[None, :], other=0.0)
    delta = tl.sum(b.to(tl.float32) * y[None, :], axis=1)
    o_ptrs = out_ptr + tok.to(tl.int64) * stride_out_tok + offset + offs_n
    base = tl.load(o_ptrs, mask=n_mask, other=0.0)
    tl.store(o_ptrs, (base.to(tl.float32) + delta).to(out_ptr.dtype.element_ty), mask=n_mask)


def lora_expand(
    y: torch.Tensor,
    lora_b: tuple[torch.Tensor, ...],
    meta: LoRAKernelMeta,
    out: torch.Tensor,
    slice_offsets: Sequence[int],
    *,
    config: ExpandConfig | None = None,
) -> torch.Tensor:
    """Second LoRA product for every slice of a (possibly fused) projection, in one launch:

        out[t, off_i : off_i + out_i] += lora_b[i][token_lora[t]] @ y[i, t]
                                                    for tokens t with a slot, i over slices

    y (from `lora_shrink`) is rounded to the weight dtype before the product, which sums in
    float32; the addition is rounded once to out's dtype. Rows of base-model tokens and columns
    outside the slices are not touched. The PEFT scaling is expected folded into B.
    y: [num_slices, T, R] fp32/fp16/bf16, contiguous last dim; lora_b: 1 to 3 contiguous
    [num_slots, out_i, R] tensors of one dtype; out: [T, N] with a contiguous last dim;
    slice_offsets: the column where each slice starts in out, off_i + out_i <= N. Returns `out`.
    """
    num_slices = len(lora_b)
    if not 1 <= num_slices <= MAX_SLICES or len(slice_offsets) != num_slices:
        raise ValueError(
            f"need 1 to {MAX_SLICES} lora_b slices and one offset each, "
            f"got {num_slices} slices and {len(slice_offsets)} offsets"
        )
    if y.dim() != 3 or y.shape[0] != num_slices or y.dtype not in LORA_DTYPES or y.stride(-1) != 1:
        raise ValueError(
            f"y must be [{num_slices}, T, R] fp32/fp16/bf16 with a contiguous last dim, "
            f"got {tuple(y.shape)} {y.dtype}"
        )
    num_tokens, rank = y.shape[1], y.shape[2]
    if out.dim() != 2 or out.shape[0] != num_tokens or out.dtype not in LORA_DTYPES:
        raise ValueError(f"out must be [{num_tokens}, N] fp16/bf16/fp32, got {tuple(out.shape)}")
    if out.stride(-1) != 1:
        raise ValueError("out needs a contiguous last dim")
    first = lora_b[0]
    for b, offset in zip(lora_b, slice_offsets, strict=True):
        if b.dim() != 3 or b.shape[0] != first.shape[0] or b.shape[2] != rank:
            raise ValueError(
                f"each lora_b slice must be [{first.shape[0]}, out_i, {rank}], got {tuple(b.shape)}"
            )
        if b.dtype != first.dtype or b.dtype not in LORA_DTYPES or not b.is_contiguous():
            raise ValueError(f"lora_b slices must be contiguous and share one dtype, got {b.dtype}")
        if not 0 <= offset <= out.shape[1] - b.shape[1]:
            raise ValueError(
                f"slice of width {b.shape[1]} at offset {offset} does not fit out's "
                f"{out.shape[1]} columns"
            )
        if b.device != out.device:
            raise ValueError(f"lora_b is on {b.device}, out on {out.device}")
    if y.device != out.device:
        raise ValueError(f"y is on {y.device}, out on {out.device}")
    meta.check_compatible(num_tokens, first.shape[0], out.device)
    if num_tokens == 0:
        return out
    if config is None:
        config = ExpandConfig.for_meta(meta, out.device, out.element_size())
    widths = [b.shape[1] for b in lora_b]
    block_r = max(16, triton.next_power_of_2(rank))
    pad = MAX_SLICES - num_slices
    if config.per_token:
        grid = (num_tokens, triton.cdiv(max(widths), config.block_n), num_slices)
        _lora_expand_token_kernel[grid](
            y,
            *lora_b,
            *[first] * pad,
            out,
            meta.token_slots,
            *widths,
            *[0] * pad,
            *slice_offsets,
            *[0] * pad,
            rank,
            y.stride(0),
            y.stride(1),
            out.stride(0),
            BLOCK_N=config.block_n,
            BLOCK_R=block_r,
            num_warps=config.num_warps,
            num_stages=config.num_stages,
        )
        return out
    tiles = meta.tile_segments(config.block_m)
    grid = (
        tiles.shape[0],
        triton.cdiv(max(widths), config.block_n),
        num_slices,
    )
    _lora_expand_kernel[grid](
        y,
        *lora_b,
        *[first] * pad,
        out,
        meta.sorted_token_ids,
        meta.segment_starts,
        meta.segment_slots,
        tiles,
        *widths,
        *[0] * pad,
        *slice_offsets,
        *[0] * pad,
        rank,
        y.stride(0),
        y.stride(1),
        out.stride(0),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_R=block_r,
        EVEN_R=rank == block_r,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out
