"""Decode attention (one query token per sequence) over the paged KV cache, flash-decoding style.

One program serves one sequence and one KV head, with the GROUP query heads that share it as the
rows of a tensor-core tile, so the cache is read once per KV head. When sequences x KV heads
are too few programs to fill the GPU and contexts are long, the context is split into equal
ranges across programs that write partial results (unnormalised output, running max and sum);
the last of a sequence's splits to finish (an atomic count per sequence and KV head) combines
them, so the split costs no second launch, which at batch 1 is a good part of a layer's
attention time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from loraplex.kernels.launch_config import head_dim_bucket, launch_config, num_multiprocessors
from loraplex.kernels.paged_kv import LOG2_E, attend_tile, query_for_fp8_cache
from loraplex.kernels.pdl import pdl_options, wait_for_previous
from loraplex.kernels.reference import FP8_DTYPE


@dataclass(frozen=True)
class DecodeConfig:
    block_n: int  # cached tokens per inner step
    num_warps: int
    num_stages: int
    programs_per_sm: int  # split the context until the grid has this many programs per SM...
    min_split_tokens: int  # ...but give no split fewer tokens than this
    max_splits: int

    @classmethod
    def for_head_dim(
        cls, head_dim: int, device: torch.device, kv_fp8: bool = False
    ) -> DecodeConfig:
        """The config of the head-dim bucket; with an fp8 cache, its `<bucket>-fp8` entry
        where the GPU's table has one (an fp8 tile moves half the bytes of a bf16 one, so it
        may want longer tiles to keep as many bytes in flight)."""
        key = head_dim_bucket("paged_decode", head_dim, device)
        if kv_fp8:
            try:
                return cls(**launch_config("paged_decode", f"{key}-fp8", device))
            except KeyError:
                pass
        return cls(**launch_config("paged_decode", key, device))


def split_plan(
    num_seqs: int, num_kv_heads: int, max_context_len: int, config: DecodeConfig, num_sms: int
) -> tuple[int, int]:
    """(number of context splits, tokens per split), from host-known sizes alone."""
    programs = num_seqs * num_kv_heads
    wanted = triton.cdiv(config.programs_per_sm * num_sms, programs)
    splits = min(wanted, max_context_len // config.min_split_tokens, config.max_splits)
    if splits <= 1:
        return 1, max(max_context_len, 1)
    tokens = triton.cdiv(triton.cdiv(max_context_len, splits), config.block_n) * config.block_n
    return triton.cdiv(max_context_len, tokens), tokens


@triton.jit
def _paged_decode_kernel(
    query_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    part_out_ptr,
    part_max_ptr,
    part_sum_ptr,
    split_counts_ptr,
    block_tables_ptr,
    context_lens_ptr,
    cu_seqlens_q_ptr,
    k_scale_ptr,
    v_scale_ptr,
    qk_scale,
    sliding_window,
    tokens_per_split,
    num_splits,
    num_heads,
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
    BLOCK_N: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    KV_FP8: tl.constexpr,
    USE_WINDOW: tl.constexpr,
    SPLIT: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    q_tok = tl.load(cu_seqlens_q_ptr + seq)
    if tl.load(cu_seqlens_q_ptr + seq + 1) == q_tok:
        return
    context_len = tl.load(context_lens_ptr + seq)
    kv_start = split * tokens_per_split
    # The last split takes whatever is left, so a context longer than planned is still covered.
    kv_end = context_len
    if split < num_splits - 1:
        kv_end = tl.minimum(context_len, kv_start + tokens_per_split)
    if USE_WINDOW:
        kv_start = tl.maximum(kv_start, context_len - sliding_window)

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n0 = tl.arange(0, BLOCK_N)
    head = kv_head * GROUP + offs_m
    io_mask = (offs_m < GROUP)[:, None] & (offs_d[None, :] < HEAD_DIM)
    q_ptrs = query_ptr + q_tok.to(tl.int64) * stride_q_tok + head[:, None] * stride_q_head
    q = tl.load(q_ptrs + offs_d[None, :], mask=io_mask, other=0.0)
    q_pos = tl.full([BLOCK_M], 0, tl.int32) + context_len - 1
    if KV_FP8:
        qk_scale = qk_scale * tl.load(k_scale_ptr)
        q = query_for_fp8_cache(q)
    table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_table

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    # Every cached token in [kv_start, kv_end) is visible: mask only the ragged last tile.
    full_end = kv_start + tl.maximum(kv_end - kv_start, 0) // BLOCK_N * BLOCK_N
    for start in range(kv_start, full_end, BLOCK_N):
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
            False,
            False,
            KV_FP8,
        )
    if full_end < kv_end:
        m_i, l_i, acc = attend_tile(
            q,
            q_pos,
            m_i,
            l_i,
            acc,
            full_end,
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
            False,
            False,
            KV_FP8,
        )

    if SPLIT:
        row = (seq * num_heads + head) * num_splits + split
        tl.store(part_max_ptr + row, m_i, mask=offs_m < GROUP)
        tl.store(part_sum_ptr + row, l_i, mask=offs_m < GROUP)
        part_ptrs = part_out_ptr + row[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
        tl.store(part_ptrs, acc, mask=io_mask)
        # Every thread's partials are written before the release below (CUTLASS's semaphore
        # pattern); the count returns to 0 for the next launch.
        tl.debug_barrier()
        count_ptr = split_counts_ptr + seq * tl.num_programs(1) + kv_head
        if tl.atomic_add(count_ptr, 1, sem="acq_rel", scope="gpu") == num_splits - 1:
            tl.store(count_ptr, 0)
            _combine_splits(
                out_ptr, part_out_ptr, part_max_ptr, part_sum_ptr, v_scale_ptr, seq, head, q_tok,
                context_len, tokens_per_split, num_splits, num_heads, stride_o_tok,
                stride_o_head, offs_m, offs_d, io_mask, GROUP, HEAD_DIM, BLOCK_M, BLOCK_D, KV_FP8,
            )  # fmt: skip
    else:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        if KV_FP8:
            out = out * tl.load(v_scale_ptr)
        o_ptrs = out_ptr + q_tok.to(tl.int64) * stride_o_tok + head[:, None] * stride_o_head
        tl.store(o_ptrs + offs_d[None, :], out.to(out_ptr.dtype.element_ty), mask=io_mask)


@triton.jit
def _combine_splits(
    out_ptr, part_out_ptr, part_max_ptr, part_sum_ptr, v_scale_ptr, seq, head, q_tok,
    context_len, tokens_per_split, num_splits, num_heads, stride_o_tok, stride_o_head, offs_m,
    offs_d, io_mask, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, KV_FP8: tl.constexpr,
):  # fmt: skip
    """Output of the GROUP query heads `head` from the partials of the splits that hold cached
    tokens (the others are empty: max -inf, sum 0). Partials are read past L1, which may hold
    lines from before other programs wrote them."""
    used = tl.minimum(tl.cdiv(context_len, tokens_per_split), num_splits)
    first = (seq * num_heads + head) * num_splits
    row_mask = offs_m < GROUP
    m_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for s in range(0, used):
        part_max = tl.load(part_max_ptr + first + s, mask=row_mask, other=0.0, cache_modifier=".cg")
        m_max = tl.maximum(m_max, part_max)
    # The query's own key makes some split non-empty, so m_max is finite on real rows.
    m_max = tl.where(row_mask, m_max, 0.0)
    total = tl.zeros([BLOCK_M], tl.float32)
    out = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for s in range(0, used):
        row = first + s
        weight = tl.math.exp2(
            tl.load(part_max_ptr + row, mask=row_mask, other=0.0, cache_modifier=".cg") - m_max
        )
        total += weight * tl.load(
            part_sum_ptr + row, mask=row_mask, other=0.0, cache_modifier=".cg"
        )
        part_ptrs = part_out_ptr + row[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :]
        parts = tl.load(part_ptrs, mask=io_mask, other=0.0, cache_modifier=".cg")
        out += parts * weight[:, None]
    out = out / tl.where(total == 0.0, 1.0, total)[:, None]
    if KV_FP8:
        out = out * tl.load(v_scale_ptr)
    o_ptrs = out_ptr + q_tok.to(tl.int64) * stride_o_tok + head[:, None] * stride_o_head
    tl.store(o_ptrs + offs_d[None, :], out.to(out_ptr.dtype.element_ty), mask=io_mask)


_split_counts: dict[torch.device, list[torch.Tensor]] = {}


def split_counts(device: torch.device, size: int) -> torch.Tensor:
    """Zeroed int32 counters, at least `size`, that the kernel leaves zeroed again. Buffers are
    kept for the process: a CUDA graph captured with one keeps its address."""
    buffers = _split_counts.setdefault(device, [])
    if not buffers or buffers[-1].numel() < size:
        buffers.append(torch.zeros(max(size, 4096), dtype=torch.int32, device=device))
    return buffers[-1]


def paged_decode(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    out: torch.Tensor,
    *,
    max_context_len: int,
    scale: float,
    k_scale: torch.Tensor,
    v_scale: torch.Tensor,
    sliding_window: int | None,
    config: DecodeConfig | None = None,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Launch the decode kernel(s) on arguments `paged_attention` has already checked.

    `num_splits` overrides the split plan (tests use it to cover both paths).
    """
    num_heads, head_dim = query.shape[1], query.shape[2]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    num_seqs = context_lens.shape[0]
    if config is None:
        config = DecodeConfig.for_head_dim(head_dim, query.device, k_cache.dtype == FP8_DTYPE)
    if num_splits is None:
        sms = num_multiprocessors(query.device)
        num_splits, tokens_per_split = split_plan(
            num_seqs, num_kv_heads, max_context_len, config, sms
        )
    else:
        tokens_per_split = triton.cdiv(triton.cdiv(max_context_len, num_splits), config.block_n)
        tokens_per_split = max(tokens_per_split, 1) * config.block_n
    split = num_splits > 1
    fp8 = k_cache.dtype == torch.float8_e4m3fn
    part_shape = (num_seqs, num_heads, num_splits) if split else (1, 1, 1)
    part_max = torch.empty(part_shape, dtype=torch.float32, device=query.device)
    part_sum = torch.empty_like(part_max)
    part_out = torch.empty((*part_shape, head_dim), dtype=torch.float32, device=query.device)
    block_d = max(16, triton.next_power_of_2(head_dim))
    _paged_decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        query,
        k_cache,
        v_cache,
        out,
        part_out,
        part_max,
        part_sum,
        split_counts(query.device, num_seqs * num_kv_heads),
        block_tables,
        context_lens,
        cu_seqlens_q,
        k_scale,
        v_scale,
        scale * LOG2_E,
        sliding_window or 0,
        tokens_per_split,
        num_splits,
        num_heads,
        query.stride(0),
        query.stride(1),
        out.stride(0),
        out.stride(1),
        *k_cache.stride()[:3],
        *v_cache.stride()[:3],
        block_tables.stride(0),
        GROUP=group,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_M=max(16, triton.next_power_of_2(group)),
        BLOCK_N=config.block_n,
        PAGE_SIZE=k_cache.shape[1],
        KV_FP8=fp8,
        USE_WINDOW=sliding_window is not None,
        SPLIT=split,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        **pdl_options(query.device),
    )
    return out
