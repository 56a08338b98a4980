"""Rotary position embedding applied in place to the query and key heads of a fused qkv
output: one launch for both, instead of the ~20 elementwise kernels of the eager formula.

Each token reads the cos / sin row of its position from the float32 cache [max_pos, D] (whose
two halves are equal, as transformers builds it) and rotates (x1, x2) -> (x1 c - x2 s,
x2 c + x1 s), rounding to the activation dtype where transformers' `q * cos + rotate_half(q) *
sin` rounds (cos and sin cast first, then each product and the sum).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from loraplex.kernels.pdl import pdl_options, wait_for_previous
from loraplex.kernels.store_kv import KVWrite, _store_token, check_store, store_launch_args


@triton.jit
def _rotate(
    ptr,
    stride_tok,
    stride_head,
    tok,
    cos,
    sin,
    offs_d,
    NUM_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    offs_h = tl.arange(0, BLOCK_H)
    mask = (offs_h[:, None] < NUM_HEADS) & (offs_d[None, :] < HALF)
    base = ptr + tok * stride_tok + offs_h[:, None] * stride_head + offs_d[None, :]
    x1 = tl.load(base, mask=mask, other=0.0)
    x2 = tl.load(base + HALF, mask=mask, other=0.0)
    # In the activation dtype, each product and sum rounded on its own (no fused multiply-add:
    # launched with enable_fp_fusion=False), as transformers' eager formula rounds.
    first = x1 * cos - x2 * sin
    second = x2 * cos + x1 * sin
    tl.store(base, first, mask=mask)
    tl.store(base + HALF, second, mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr,
    k_ptr,
    positions_ptr,
    cos_ptr,
    sin_ptr,
    stride_q_tok,
    stride_q_head,
    stride_k_tok,
    stride_k_head,
    stride_cos,
    NUM_Q_HEADS: tl.constexpr,
    NUM_K_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    PDL: tl.constexpr,
    STORE: tl.constexpr,
    value_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slot_mapping_ptr,
    k_scale_ptr,
    v_scale_ptr,
    stride_v_tok,
    stride_v_head,
    stride_kc_block,
    stride_kc_slot,
    stride_kc_head,
    stride_vc_block,
    stride_vc_slot,
    stride_vc_head,
    NUM_KV_HEADS: tl.constexpr = 1,
    HEAD_DIM: tl.constexpr = 1,
    BLOCK_H: tl.constexpr = 1,
    BLOCK_D: tl.constexpr = 1,
    PAGE_SIZE: tl.constexpr = 1,
    KV_FP8: tl.constexpr = False,
    FP8_MAX_VALUE: tl.constexpr = 448.0,
):
    wait_for_previous(PDL)
    tok = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + tok)
    offs_d = tl.arange(0, BLOCK_HALF)
    dmask = offs_d < HALF
    cos = tl.load(cos_ptr + position * stride_cos + offs_d, mask=dmask, other=0.0)
    sin = tl.load(sin_ptr + position * stride_cos + offs_d, mask=dmask, other=0.0)
    # Cast like transformers' cos.to(q.dtype) before multiplying.
    cos = cos.to(q_ptr.dtype.element_ty)[None, :]
    sin = sin.to(q_ptr.dtype.element_ty)[None, :]
    _rotate(q_ptr, stride_q_tok, stride_q_head, tok, cos, sin, offs_d, NUM_Q_HEADS, HALF, BLOCK_HQ)
    _rotate(k_ptr, stride_k_tok, stride_k_head, tok, cos, sin, offs_d, NUM_K_HEADS, HALF, BLOCK_HK)
    if STORE:
        # The rotated keys are read back from memory: every thread's writes above are
        # visible to the whole program after the barrier.
        tl.debug_barrier()
        _store_token(
            tok, k_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr, k_scale_ptr,
            v_scale_ptr, stride_k_tok, stride_k_head, stride_v_tok, stride_v_head,
            stride_kc_block, stride_kc_slot, stride_kc_head, stride_vc_block, stride_vc_slot,
            stride_vc_head, NUM_KV_HEADS, HEAD_DIM, BLOCK_H, BLOCK_D, PAGE_SIZE, KV_FP8,
            FP8_MAX_VALUE,
        )  # fmt: skip


# The cache-write arguments of `_rotary_kernel` (see `store_kv.store_launch_args`).
_STORE_POINTERS = (
    "value_ptr", "k_cache_ptr", "v_cache_ptr", "slot_mapping_ptr", "k_scale_ptr", "v_scale_ptr"
)  # fmt: skip
_STORE_STRIDES = (
    "stride_v_tok", "stride_v_head", "stride_kc_block", "stride_kc_slot", "stride_kc_head",
    "stride_vc_block", "stride_vc_slot", "stride_vc_head",
)  # fmt: skip


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kv: KVWrite | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate `q [T, Hq, D]` and `k [T, Hk, D]` in place by `positions [T]`; returns them.

    `cos`, `sin`: [max_positions, D] float32 caches. q and k may be views into one qkv tensor
    (any token and head strides, unit stride along D). With `kv`, the same launch then writes
    the rotated keys and `kv.value` into the paged cache, as `store_kv` would."""
    num_tokens, num_q_heads, head_dim = q.shape
    if k.shape[0] != num_tokens or k.shape[2] != head_dim or head_dim % 2:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not match")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or cos.stride(-1) != 1:
        raise ValueError("q, k and the cos cache need unit stride along the head dimension")
    if cos.shape[-1] != head_dim or cos.shape != sin.shape:
        raise ValueError(f"cos/sin caches {tuple(cos.shape)} do not fit head_dim {head_dim}")
    if positions.shape != (num_tokens,):
        raise ValueError(f"positions has shape {tuple(positions.shape)}, expected ({num_tokens},)")
    if kv is not None:
        check_store(k, kv)
        store = store_launch_args(k, kv)
        for shared in ("key_ptr", "stride_k_tok", "stride_k_head"):  # the rotary's own k
            del store[shared]
    else:  # no cache write: any pointer, zero strides, for arguments never read
        store = {name: q for name in _STORE_POINTERS} | dict.fromkeys(_STORE_STRIDES, 0)
    if num_tokens:
        half = head_dim // 2
        _rotary_kernel[(num_tokens,)](
            q,
            k,
            positions,
            cos,
            sin,
            q.stride(0),
            q.stride(1),
            k.stride(0),
            k.stride(1),
            cos.stride(0),
            NUM_Q_HEADS=num_q_heads,
            NUM_K_HEADS=k.shape[1],
            HALF=half,
            BLOCK_HQ=triton.next_power_of_2(num_q_heads),
            BLOCK_HK=triton.next_power_of_2(k.shape[1]),
            BLOCK_HALF=triton.next_power_of_2(half),
            **pdl_options(q.device),
            STORE=kv is not None,
            **store,
            num_warps=4,
            enable_fp_fusion=False,
        )
    return q, k
