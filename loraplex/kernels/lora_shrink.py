"""LoRA shrink: the rank-R projection `y = x @ A^T` of each token with its own adapter's A.

Programs take tiles of tokens that share a slot (`LoRAKernelMeta` groups them once per forward),
so a prompt's tokens read their adapter's A once per tile (SGMV) and a decode batch of distinct
adapters degenerates to one token per program (BGMV). The regime's launch parameters (tile
height, input features per program) come from the GPU's config table; `per_token` switches to a
kernel with one program per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from loraplex.kernels.launch_config import for_element_size, launch_config
from loraplex.kernels.lora_meta import LORA_DTYPES, MAX_SLICES, LoRAKernelMeta
from loraplex.kernels.segments import tile_rows


@dataclass(frozen=True)
class ShrinkConfig:
    block_m: int  # tokens of one slot per program
    block_k: int  # input features per inner step
    num_warps: int
    num_stages: int
    # Input features per program (0: all): splitting K adds programs when few tiles have work
    # (one adapter in decode); the partial sums then meet through float32 atomics.
    k_per_program: int = 0
    # One program per token (BGMV) instead of per tile of a slot's tokens (SGMV): fewer
    # dependent loads before streaming the weights, for decode batches of many adapters.
    per_token: bool = False

    @classmethod
    def for_meta(
        cls, meta: LoRAKernelMeta, device: torch.device, element_size: int = 2
    ) -> ShrinkConfig:
        regime = "prefill" if meta.prefill else "decode"
        values = launch_config("lora_shrink", regime, device)
        return cls(**for_element_size(values, element_size, "block_k"))


@triton.jit
def _lora_shrink_kernel(
    x_ptr,
    a0_ptr,
    a1_ptr,
    a2_ptr,
    y_ptr,
    sorted_ids_ptr,
    segment_starts_ptr,
    segment_slots_ptr,
    tile_segments_ptr,
    in_features,
    k_per_program,
    rank,
    stride_x_tok,
    stride_a_slot,
    stride_a_rank,
    stride_y_slice,
    stride_y_tok,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
    EVEN_K: tl.constexpr,
    EVEN_R: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    tile = tl.program_id(0)
    slice_id = tl.program_id(1)
    k_start = tl.program_id(2) * k_per_program
    segment = tl.load(tile_segments_ptr + tile)
    first, length = tile_rows(segment_starts_ptr, segment, tile, BLOCK_M)
    if first >= length:
        return
    slot = tl.load(segment_slots_ptr + segment)
    a_ptr = a0_ptr
    if slice_id == 1:
        a_ptr = a1_ptr
    elif slice_id == 2:
        a_ptr = a2_ptr

    offs_m = first + tl.arange(0, BLOCK_M)
    m_mask = offs_m < length
    sorted_ptrs = sorted_ids_ptr + tl.load(segment_starts_ptr + segment) + offs_m
    # Rows past the segment read token 0 (always present) and are never stored.
    tok = tl.load(sorted_ptrs, mask=m_mask, other=0).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank
    x_ptrs = x_ptr + tok[:, None] * stride_x_tok + (k_start + offs_k)[None, :]
    a_ptrs = a_ptr + slot.to(tl.int64) * stride_a_slot + offs_r[None, :] * stride_a_rank
    a_ptrs = a_ptrs + (k_start + offs_k)[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for k in range(k_start, tl.minimum(k_start + k_per_program, in_features), BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs)
            a = tl.load(a_ptrs) if EVEN_R else tl.load(a_ptrs, mask=r_mask[None, :], other=0.0)
        else:
            k_mask = (k + offs_k) < in_features
            x = tl.load(x_ptrs, mask=k_mask[None, :], other=0.0)
            a = tl.load(a_ptrs, mask=r_mask[None, :] & k_mask[:, None], other=0.0)
        acc += tl.dot(x, a)
        x_ptrs += BLOCK_K
        a_ptrs += BLOCK_K
    y_ptrs = y_ptr + slice_id * stride_y_slice + tok[:, None] * stride_y_tok + offs_r[None, :]
    y_mask = m_mask[:, None] & r_mask[None, :]
    if SPLIT_K:
        tl.atomic_add(y_ptrs, acc, mask=y_mask, sem="relaxed")
    else:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)


@triton.jit
def _lora_shrink_token_kernel(
    x_ptr,
    a0_ptr,
    a1_ptr,
    a2_ptr,
    y_ptr,
    token_slots_ptr,
    in_features,
    k_per_program,
    rank,
    stride_x_tok,
    stride_a_slot,
    stride_a_rank,
    stride_y_slice,
    stride_y_tok,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
    EVEN_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    tok = tl.program_id(0)
    slice_id = tl.program_id(1)
    k_start = tl.program_id(2) * k_per_program
    slot = tl.load(token_slots_ptr + tok)
    if slot < 0:
        return
    a_ptr = a0_ptr
    if slice_id == 1:
        a_ptr = a1_ptr
    elif slice_id == 2:
        a_ptr = a2_ptr
    offs_k = tl.arange(0, BLOCK_K)
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank
    x_ptrs = x_ptr + tok.to(tl.int64) * stride_x_tok + k_start + offs_k
    a_ptrs = a_ptr + slot.to(tl.int64) * stride_a_slot + offs_r[:, None] * stride_a_rank
    a_ptrs = a_ptrs + (k_start + offs_k)[None, :]
    # Products summed element-wise and reduced once: one token needs no tensor cores.
    acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=tl.float32)
    for k in range(k_start, tl.minimum(k_start + k_per_program, in_features), BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs)
            a = tl.load(a_ptrs, mask=r_mask[:, None], other=0.0)
        else:
            k_mask = (k + offs_k) < in_features
            x = tl.load(x_ptrs, mask=k_mask, other=0.0)
            a = tl.load(a_ptrs, mask=r_mask[:, None] & k_mask[None, :], other=0.0)
        acc += a.to(tl.float32) * x.to(tl.float32)[None, :]
        x_ptrs += BLOCK_K
        a_ptrs += BLOCK_K
    y = tl.sum(acc, axis=1)
    y_ptrs = y_ptr + slice_id * stride_y_slice + tok.to(tl.int64) * stride_y_tok + offs_r
    if SPLIT_K:
        tl.atomic_add(y_ptrs, y, mask=r_mask, sem="relaxed")
    else:
        tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=r_mask)


def lora_shrink(
    x: torch.Tensor,
    lora_a: tuple[torch.Tensor, ...],
    meta: LoRAKernelMeta,
    out: torch.Tensor,
    *,
    config: ShrinkConfig | None = None,
) -> torch.Tensor:
    """First LoRA product for every slice of a (possibly fused) projection, in one launch:

        out[i, t] = lora_a[i][token_lora[t]] @ x[t]    for tokens t with a slot (float32 sums)

    x: [T, in] with a contiguous last dim; lora_a: 1 to 3 contiguous [num_slots, R, in] tensors
    in x's dtype (the slot buffers of each output slice); meta: `LoRAKernelMeta` of this forward;
    out: [num_slices, T, R], contiguous in its last dim, float32 (recommended: `lora_expand`
    rounds it once to the weight dtype, and only a float32 out lets the launch split the input
    features across programs) or the model dtype. Rows of base-model tokens (slot -1) carry no
    result: they are left as they were, or zeroed when the launch splits the features.
    Returns `out`.
    """
    if not 1 <= len(lora_a) <= MAX_SLICES:
        raise ValueError(f"lora_a must hold 1 to {MAX_SLICES} slices, got {len(lora_a)}")
    if x.dim() != 2 or x.dtype not in LORA_DTYPES or x.stride(-1) != 1:
        raise ValueError(
            f"x must be [T, in] fp16/bf16/fp32 with a contiguous last dim, "
            f"got {tuple(x.shape)} {x.dtype}"
        )
    num_tokens, in_features = x.shape
    first = lora_a[0]
    if first.dim() != 3 or first.shape[2] != in_features:
        raise ValueError(f"lora_a must be [num_slots, R, {in_features}], got {tuple(first.shape)}")
    for a in lora_a:
        if a.shape != first.shape or a.dtype != x.dtype or not a.is_contiguous():
            raise ValueError(
                f"every lora_a slice must be a contiguous {tuple(first.shape)} {x.dtype} tensor, "
                f"got {tuple(a.shape)} {a.dtype}"
            )
        if a.device != x.device:
            raise ValueError(f"lora_a is on {a.device}, x on {x.device}")
    num_slots, rank = first.shape[0], first.shape[1]
    meta.check_compatible(num_tokens, num_slots, x.device)
    expected = (len(lora_a), num_tokens, rank)
    if tuple(out.shape) != expected or out.dtype not in LORA_DTYPES or out.stride(-1) != 1:
        raise ValueError(
            f"out must be {expected} fp32/fp16/bf16 with a contiguous last dim, "
            f"got {tuple(out.shape)} {out.dtype}"
        )
    if out.device != x.device:
        raise ValueError(f"out is on {out.device}, x on {x.device}")
    if num_tokens == 0:
        return out
    if config is None:
        config = ShrinkConfig.for_meta(meta, x.device, x.element_size())
    block_r = max(16, triton.next_power_of_2(rank))
    pointers = [*lora_a] + [first] * (MAX_SLICES - len(lora_a))
    k_per_program = in_features
    if config.k_per_program and out.dtype == torch.float32:
        k_per_program = triton.cdiv(config.k_per_program, config.block_k) * config.block_k
    split_k = triton.cdiv(in_features, k_per_program)
    if split_k > 1:
        out.zero_()
    if config.per_token:
        _launch_per_token(x, pointers, out, meta, config, k_per_program, split_k, block_r)
        return out
    tiles = meta.tile_segments(config.block_m)
    grid = (tiles.shape[0], len(lora_a), split_k)
    _lora_shrink_kernel[grid](
        x,
        *pointers,
        out,
        meta.sorted_token_ids,
        meta.segment_starts,
        meta.segment_slots,
        tiles,
        in_features,
        k_per_program,
        rank,
        x.stride(0),
        first.stride(0),
        first.stride(1),
        out.stride(0),
        out.stride(1),
        BLOCK_M=config.block_m,
        BLOCK_K=config.block_k,
        BLOCK_R=block_r,
        EVEN_K=in_features % config.block_k == 0,
        EVEN_R=rank == block_r,
        SPLIT_K=split_k > 1,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out


def _launch_per_token(
    x: torch.Tensor,
    pointers: list[torch.Tensor],
    out: torch.Tensor,
    meta: LoRAKernelMeta,
    config: ShrinkConfig,
    k_per_program: int,
    split_k: int,
    block_r: int,
) -> None:
    in_features, first = x.shape[1], pointers[0]
    # The element-wise accumulator holds BLOCK_R x BLOCK_K floats: narrow K for large ranks.
    block_k = max(16, min(config.block_k, 8192 // block_r))
    if k_per_program % block_k:
        block_k = config.block_k
    grid = (x.shape[0], out.shape[0], split_k)
    _lora_shrink_token_kernel[grid](
        x,
        *pointers,
        out,
        meta.token_slots,
        in_features,
        k_per_program,
        first.shape[1],
        x.stride(0),
        first.stride(0),
        first.stride(1),
        out.stride(0),
        out.stride(1),
        BLOCK_K=block_k,
        BLOCK_R=block_r,
        EVEN_K=in_features % block_k == 0,
        SPLIT_K=split_k > 1,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
