"""Building blocks of the paged KV cache kernels: gathering a tile of keys or values out of the
paged cache, one step of the online (flash) softmax, and the fp8 scales' argument check."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

LOG2_E = 1.4426950408889634


@triton.jit
def load_kv_tile(
    cache_ptr,
    table_ptr,
    offs_n,
    kv_head,
    offs_d,
    n_mask,
    stride_block,
    stride_slot,
    stride_head,
    PAGE_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr,
):
    """Cached tokens at positions `offs_n` of one sequence as a [BLOCK_N, BLOCK_D] tile.

    Each row finds its page through the sequence's block table, so a tile may span several
    pages and its size is independent of the page size. Rows outside `n_mask` (when MASKED) and
    columns past HEAD_DIM read as zero.
    """
    page_index = offs_n // PAGE_SIZE
    if MASKED:
        page = tl.load(table_ptr + page_index, mask=n_mask, other=0)
    else:
        page = tl.load(table_ptr + page_index)
    row = page.to(tl.int64) * stride_block + (offs_n % PAGE_SIZE) * stride_slot
    ptrs = cache_ptr + row[:, None] + kv_head * stride_head + offs_d[None, :]
    if HEAD_DIM == BLOCK_D:
        if MASKED:
            return tl.load(ptrs, mask=n_mask[:, None], other=0.0)
        return tl.load(ptrs)
    d_mask = offs_d[None, :] < HEAD_DIM
    if MASKED:
        return tl.load(ptrs, mask=n_mask[:, None] & d_mask, other=0.0)
    return tl.load(ptrs, mask=d_mask, other=0.0)


@triton.jit
def query_for_fp8_cache(q):
    """The query in the dtype its products with an fp8 cache run in. A bf16 query becomes
    fp16: e4m3 converts to fp16 in one instruction on Hopper but to bf16 in several, which cost
    more than the cache tile's bytes, and fp16 holds a query's bf16 values exactly within its
    range (|q| < 65504), with the probabilities in the second product more precisely."""
    if q.dtype.is_bf16():
        q = q.to(tl.float16)
    return q


@triton.jit
def online_softmax_step(scores, v, m_i, l_i, acc):
    """Fold one tile into the running (max, sum, output): scores are log2-scaled, masked to
    -inf; a row whose scores are all -inf so far stays at (−inf, 0, 0) instead of NaN."""
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(scores - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def attend_tile(
    q,
    q_pos,
    m_i,
    l_i,
    acc,
    start,
    kv_end,
    table_ptr,
    k_cache_ptr,
    v_cache_ptr,
    kv_head,
    offs_n0,
    offs_d,
    qk_scale,
    sliding_window,
    stride_k_block,
    stride_k_slot,
    stride_k_head,
    stride_v_block,
    stride_v_slot,
    stride_v_head,
    PAGE_SIZE: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    KV_FP8: tl.constexpr,
):
    """Attend the query rows `q` ([BLOCK_M, BLOCK_D], at positions `q_pos`) to the cached
    tokens `start + offs_n0`. Unless MASKED, every token of the tile must exist (< kv_end) and be
    visible to every row; MASKED hides tokens at or past kv_end and, when CAUSAL / USE_WINDOW,
    those after a row's position or outside its window."""
    offs_n = start + offs_n0
    n_mask = offs_n < kv_end
    k = load_kv_tile(
        k_cache_ptr,
        table_ptr,
        offs_n,
        kv_head,
        offs_d,
        n_mask,
        stride_k_block,
        stride_k_slot,
        stride_k_head,
        PAGE_SIZE,
        HEAD_DIM,
        BLOCK_D,
        MASKED,
    )
    if KV_FP8:
        k = k.to(q.dtype)
    scores = tl.dot(q, tl.trans(k)) * qk_scale
    if MASKED:
        allowed = n_mask[None, :]
        if CAUSAL:
            allowed = allowed & (offs_n[None, :] <= q_pos[:, None])
        if USE_WINDOW:
            allowed = allowed & ((q_pos[:, None] - offs_n[None, :]) < sliding_window)
        scores = tl.where(allowed, scores, float("-inf"))
    v = load_kv_tile(
        v_cache_ptr,
        table_ptr,
        offs_n,
        kv_head,
        offs_d,
        n_mask,
        stride_v_block,
        stride_v_slot,
        stride_v_head,
        PAGE_SIZE,
        HEAD_DIM,
        BLOCK_D,
        MASKED,
    )
    if KV_FP8:
        v = v.to(q.dtype)
    return online_softmax_step(scores, v, m_i, l_i, acc)


def checked_scale(scale: torch.Tensor | None, name: str, device: torch.device) -> torch.Tensor:
    """An fp8 cache's per-layer scale as the kernels take it: a float32 tensor of one element
    (a tensor, so a new calibration needs no recompilation); None means 1.0."""
    if scale is None:
        return _unit_scale(device)
    if not isinstance(scale, torch.Tensor) or scale.numel() != 1 or scale.dtype != torch.float32:
        raise ValueError(f"{name} must be a 0-d or 1-element float32 tensor, got {scale!r}")
    if scale.device != device:
        raise ValueError(f"{name} is on {scale.device}, the tokens on {device}")
    return scale


@functools.cache
def _unit_scale(device: torch.device) -> torch.Tensor:
    return torch.ones((), dtype=torch.float32, device=device)
