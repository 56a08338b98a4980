"""Varlen prefill attention over the paged KV cache (chunked prefill and cached prefixes).

One program owns a tile of BLOCK_Q consecutive query tokens of one sequence and all GROUP query
heads that share one KV head, stacked into BLOCK_M = BLOCK_Q * GROUP rows, so each K/V tile is
read once per group. Tiles map to sequences through `segments`, so the grid depends only on the
token and sequence counts. Tiles of keys that every row may see run without masks; only the
diagonal tiles (and, with a sliding window, all tiles) are masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from loraplex.kernels.launch_config import for_element_size, head_dim_bucket, launch_config
from loraplex.kernels.paged_kv import LOG2_E, attend_tile, query_for_fp8_cache
from loraplex.kernels.segments import num_segment_tiles, segment_of_tile, tile_rows


@dataclass(frozen=True)
class PrefillConfig:
    block_m: int  # query rows (tokens x heads of a KV group) per program
    block_n: int  # cached tokens per inner step
    num_warps: int
    num_stages: int

    @classmethod
    def for_head_dim(
        cls, head_dim: int, device: torch.device, element_size: int = 2
    ) -> PrefillConfig:
        key = head_dim_bucket("paged_prefill", head_dim, device)
        values = launch_config("paged_prefill", key, device)
        return cls(**for_element_size(values, element_size, "block_n"))


@triton.jit
def _paged_prefill_kernel(
    query_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    block_tables_ptr,
    context_lens_ptr,
    cu_seqlens_q_ptr,
    k_scale_ptr,
    v_scale_ptr,
    qk_scale,
    num_seqs,
    sliding_window,
    stride_q_tok,
    stride_q_head,
    stride_o_tok,
    stride_o_head,
    stride_k_block,
    stride_k_slot,
    stride_k_head,
    stride_v_block,
    stride_v_slot,
    stride_v_head,
    stride_table,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    KV_FP8: tl.constexpr,
    USE_WINDOW: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = segment_of_tile(cu_seqlens_q_ptr, num_seqs, tile, BLOCK_Q)
    first_q, q_len = tile_rows(cu_seqlens_q_ptr, seq, tile, BLOCK_Q)
    if first_q >= q_len:
        return
    q_start = tl.load(cu_seqlens_q_ptr + seq)
    context_len = tl.load(context_lens_ptr + seq)

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n0 = tl.arange(0, BLOCK_N)
    q_idx = first_q + offs_m // GROUP
    head = kv_head * GROUP + offs_m % GROUP
    row_ok = (offs_m < BLOCK_Q * GROUP) & (q_idx < q_len)
    q_pos = context_len - q_len + q_idx
    tok = (q_start + q_idx).to(tl.int64)
    io_mask = row_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    q_ptrs = query_ptr + tok[:, None] * stride_q_tok + head[:, None] * stride_q_head
    q = tl.load(q_ptrs + offs_d[None, :], mask=io_mask, other=0.0)

    if KV_FP8:
        qk_scale = qk_scale * tl.load(k_scale_ptr)
        q = query_for_fp8_cache(q)
    table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_table
    first_pos = context_len - q_len + first_q
    kv_end = context_len - q_len + tl.minimum(first_q + BLOCK_Q, q_len)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if USE_WINDOW:
        masked_from = tl.maximum(first_pos - sliding_window + 1, 0) // BLOCK_N * BLOCK_N
    else:
        # Keys up to the tile's first position are visible to every row of the tile.
        masked_from = (first_pos + 1) // BLOCK_N * BLOCK_N
        for start in range(0, masked_from, BLOCK_N):
            m_i, l_i, acc = attend_tile(
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
                PAGE_SIZE,
                HEAD_DIM,
                BLOCK_D,
                False,
                True,
                USE_WINDOW,
                KV_FP8,
            )
    for start in range(masked_from, kv_end, BLOCK_N):
        m_i, l_i, acc = attend_tile(
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
            PAGE_SIZE,
            HEAD_DIM,
            BLOCK_D,
            True,
            True,
            USE_WINDOW,
            KV_FP8,
        )

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    if KV_FP8:
        out = out * tl.load(v_scale_ptr)
    o_ptrs = out_ptr + tok[:, None] * stride_o_tok + head[:, None] * stride_o_head
    tl.store(o_ptrs + offs_d[None, :], out.to(out_ptr.dtype.element_ty), mask=io_mask)


def paged_prefill(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    out: torch.Tensor,
    *,
    scale: float,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    sliding_window: int | None,
    config: PrefillConfig | None = None,
) -> torch.Tensor:
    """Launch the prefill kernel on arguments `paged_attention` has already checked."""
    num_tokens, num_heads, head_dim = query.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    num_seqs = context_lens.shape[0]
    if config is None:
        config = PrefillConfig.for_head_dim(head_dim, query.device, query.element_size())
    block_m = max(config.block_m, triton.next_power_of_2(group))
    block_q = block_m // group
    grid = (num_segment_tiles(num_tokens, num_seqs, block_q), num_kv_heads)
    _paged_prefill_kernel[grid](
        query,
        k_cache,
        v_cache,
        out,
        block_tables,
        context_lens,
        cu_seqlens_q,
        k_scale,
        v_scale,
        scale * LOG2_E,
        num_seqs,
        sliding_window or 0,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        *k_cache.stride()[:3],
        *v_cache.stride()[:3],
        block_tables.stride(0),
        GROUP=group,
        HEAD_DIM=head_dim,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_M=block_m,
        BLOCK_Q=block_q,
        BLOCK_N=config.block_n,
        PAGE_SIZE=k_cache.shape[1],
        KV_FP8=k_cache.dtype == torch.float8_e4m3fn,
        USE_WINDOW=sliding_window is not None,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out
