"""Random paged-attention problems for the kernel tests: ragged query segments over paged
contexts whose pages are scattered through a cache that also holds unrelated pages."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraplex.kernels.reference import quantize_fp8_ref


@dataclass
class PagedProblem:
    query: torch.Tensor  # [T, Hq, D]
    k_cache: torch.Tensor  # [num_blocks, page_size, Hkv, D]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [S, max_blocks] int32
    context_lens: torch.Tensor  # [S] int32
    cu_seqlens_q: torch.Tensor  # [S + 1] int32
    max_query_len: int
    max_context_len: int
    scale: float
    k_scale: torch.Tensor | None
    v_scale: torch.Tensor | None

    def kernel_args(self) -> tuple[torch.Tensor, ...]:
        return (
            self.query,
            self.k_cache,
            self.v_cache,
            self.block_tables,
            self.context_lens,
            self.cu_seqlens_q,
        )


def make_paged_problem(
    q_lens: list[int],
    context_lens: list[int],
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    page_size: int,
    dtype: torch.dtype,
    kv_fp8: bool = False,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> PagedProblem:
    """Sequence s has q_lens[s] new tokens (0 allowed) at the end of context_lens[s] cached ones."""
    generator = torch.Generator().manual_seed(seed)
    pages_per_seq = [-(-length // page_size) for length in context_lens]
    num_blocks = sum(pages_per_seq) + 3
    max_blocks = max(pages_per_seq) + 1
    page_order = torch.randperm(num_blocks, generator=generator)
    block_tables = torch.zeros(len(q_lens), max_blocks, dtype=torch.int32)
    used = 0
    for s, pages in enumerate(pages_per_seq):
        block_tables[s, :pages] = page_order[used : used + pages].to(torch.int32)
        used += pages
    cache_shape = (num_blocks, page_size, num_kv_heads, head_dim)
    k_values = torch.randn(cache_shape, generator=generator)
    v_values = torch.randn(cache_shape, generator=generator)
    if kv_fp8:
        k_scale = torch.tensor(0.02, dtype=torch.float32)
        v_scale = torch.tensor(0.03, dtype=torch.float32)
        k_cache, v_cache = quantize_fp8_ref(k_values, k_scale), quantize_fp8_ref(v_values, v_scale)
    else:
        k_scale = v_scale = None
        k_cache, v_cache = k_values.to(dtype), v_values.to(dtype)
    cu = [0]
    for length in q_lens:
        cu.append(cu[-1] + length)
    query = torch.randn(cu[-1], num_heads, head_dim, generator=generator).to(dtype)
    to = dict(device=device)
    return PagedProblem(
        query=query.to(**to),
        k_cache=k_cache.to(**to),
        v_cache=v_cache.to(**to),
        block_tables=block_tables.to(**to),
        context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        max_query_len=max(q_lens),
        max_context_len=max(context_lens),
        scale=head_dim**-0.5,
        k_scale=None if k_scale is None else k_scale.to(**to),
        v_scale=None if v_scale is None else v_scale.to(**to),
    )


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN anywhere (an unwritten poisoned element) gives inf."""
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("inf")
    return float((out - ref).norm() / ref.norm())
