"""Paged attention: checks the arguments and dispatches to the decode or the prefill kernel."""

from __future__ import annotations

import torch

from loraplex.kernels.paged_decode import paged_decode
from loraplex.kernels.paged_kv import checked_scale
from loraplex.kernels.paged_prefill import paged_prefill
from loraplex.kernels.reference import FP8_DTYPE

QUERY_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    *,
    max_query_len: int,
    max_context_len: int,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of variable-length query segments over each sequence's paged context.

    Semantics are exactly `reference.paged_attention_ref`'s:
        for each sequence s with q = query[cu_seqlens_q[s]:cu_seqlens_q[s+1]] (q_len tokens),
        K, V = the first context_lens[s] cached tokens through block_tables[s] (* k/v_scale if fp8)
        query i sits at p = context_lens[s] - q_len + i and sees keys j <= p
        (and p - j < sliding_window), with query head h reading KV head h // (Hq // Hkv):
        out[tokens of s] = softmax(q @ K^T * scale, masked) @ V

    query: [T, Hq, D] fp16 / bf16 (fp32 works too), last dim contiguous.
    k_cache, v_cache: [num_blocks, block_size, Hkv, D] in query's dtype or float8_e4m3fn.
    block_tables: [S, max_blocks] int32; context_lens: [S] int32 (cache length after this step,
    at least the segment's length); cu_seqlens_q: [S+1] int32 (starts of the query segments).
    max_query_len: the longest segment (1 selects the decode kernel: one token per sequence).
    max_context_len: the longest context, used to split long decodes across programs.
    k_scale, v_scale: 0-d or 1-element float32 tensors for an fp8 cache (None means 1.0).
    out: optional [T, Hq, D] buffer in query's dtype. Returns `out`.
    Tensor contents (lengths, block tables) are not read on the host, so they are not checked.
    """
    _check_arguments(query, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q)
    if max_query_len < 1 or max_context_len < max_query_len:
        raise ValueError(
            f"need 1 <= max_query_len <= max_context_len, got {max_query_len}, {max_context_len}"
        )
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be a positive int or None, got {sliding_window}")
    if out is None:
        out = torch.empty_like(query)
    elif out.shape != query.shape or out.dtype != query.dtype or out.stride(-1) != 1:
        raise ValueError(
            f"out must be {tuple(query.shape)} {query.dtype} with a contiguous last dim, "
            f"got {tuple(out.shape)} {out.dtype}"
        )
    if query.shape[0] == 0:
        return out
    k_scale = checked_scale(k_scale, "k_scale", query.device)
    v_scale = checked_scale(v_scale, "v_scale", query.device)
    common = dict(scale=scale, k_scale=k_scale, v_scale=v_scale, sliding_window=sliding_window)
    if max_query_len == 1:
        return paged_decode(
            query,
            k_cache,
            v_cache,
            block_tables,
            context_lens,
            cu_seqlens_q,
            out,
            max_context_len=max_context_len,
            **common,
        )
    return paged_prefill(
        query, k_cache, v_cache, block_tables, context_lens, cu_seqlens_q, out, **common
    )


def _check_arguments(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
) -> None:
    if query.dim() != 3 or query.dtype not in QUERY_DTYPES or query.stride(-1) != 1:
        raise ValueError(
            f"query must be [T, Hq, D] fp16/bf16/fp32 with a contiguous last dim, "
            f"got {tuple(query.shape)} {query.dtype}"
        )
    num_heads, head_dim = query.shape[1], query.shape[2]
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must both be [num_blocks, block_size, Hkv, D], "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if k_cache.dtype != v_cache.dtype or k_cache.dtype not in (query.dtype, FP8_DTYPE):
        raise ValueError(
            f"caches must share query's dtype {query.dtype} or be {FP8_DTYPE}, "
            f"got {k_cache.dtype} and {v_cache.dtype}"
        )
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache need a contiguous last dim")
    num_kv_heads = k_cache.shape[2]
    if k_cache.shape[3] != head_dim or not 0 < head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"head_dim must match between query ({head_dim}) and cache ({k_cache.shape[3]}) "
            f"and be at most {MAX_HEAD_DIM}"
        )
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    if context_lens.dim() != 1:
        raise ValueError(f"context_lens must be [S], got {tuple(context_lens.shape)}")
    num_seqs = context_lens.shape[0]
    _check_index_tensor(context_lens, "context_lens", (num_seqs,))
    _check_index_tensor(cu_seqlens_q, "cu_seqlens_q", (num_seqs + 1,))
    if block_tables.dim() != 2 or block_tables.shape[0] != num_seqs:
        raise ValueError(f"block_tables must be [{num_seqs}, max_blocks], got {block_tables.shape}")
    _check_index_tensor(block_tables, "block_tables", tuple(block_tables.shape))
    for name, tensor in (
        ("k_cache", k_cache),
        ("v_cache", v_cache),
        ("block_tables", block_tables),
        ("context_lens", context_lens),
        ("cu_seqlens_q", cu_seqlens_q),
    ):
        if tensor.device != query.device:
            raise ValueError(f"{name} is on {tensor.device}, query on {query.device}")


def _check_index_tensor(tensor: torch.Tensor, name: str, shape: tuple[int, ...]) -> None:
    if tensor.dtype != torch.int32 or tuple(tensor.shape) != shape or tensor.stride(-1) != 1:
        raise ValueError(
            f"{name} must be an int32 tensor of shape {shape} with a contiguous last dim, "
            f"got {tensor.dtype} {tuple(tensor.shape)}"
        )
