"""Paged attention kernels against `paged_attention_ref`: varlen prefill (cached prefixes,
chunks, empty segments) and decode (with and without the flash-decoding split)."""

from __future__ import annotations

import pytest
import torch

from loraplex.kernels import paged_attention
from loraplex.kernels.paged_decode import DecodeConfig, paged_decode
from loraplex.kernels.paged_kv import checked_scale
from loraplex.kernels.paged_prefill import PrefillConfig, paged_prefill
from loraplex.kernels.reference import paged_attention_ref
from tests.kernels.paged_cases import PagedProblem, make_paged_problem, relative_error

# Query lengths and context lengths: a one-token prompt, a chunk after a cached prefix, a full
# prompt, a chunk that ends mid-page, a sequence without new tokens, a long prefix.
PREFILL_Q = [1, 7, 33, 16, 0, 20]
PREFILL_CTX = [1, 40, 33, 70, 9, 150]
DECODE_CTX = [1, 17, 64, 100, 250, 33]
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}


def _problem(q_lens, ctx, *, heads=(4, 2), head_dim=64, page=16, dtype=torch.float16, **kw):
    return make_paged_problem(
        q_lens,
        ctx,
        num_heads=heads[0],
        num_kv_heads=heads[1],
        head_dim=head_dim,
        page_size=page,
        dtype=dtype,
        **kw,
    )


def _reference(problem: PagedProblem, sliding_window: int | None = None) -> torch.Tensor:
    return paged_attention_ref(
        *problem.kernel_args(),
        scale=problem.scale,
        k_scale=problem.k_scale,
        v_scale=problem.v_scale,
        sliding_window=sliding_window,
    )


def _run_prefill(problem, config=None, sliding_window=None) -> torch.Tensor:
    out = torch.full_like(problem.query, float("nan"))
    device = problem.query.device
    return paged_prefill(
        *problem.kernel_args(),
        out,
        scale=problem.scale,
        k_scale=checked_scale(problem.k_scale, "k_scale", device),
        v_scale=checked_scale(problem.v_scale, "v_scale", device),
        sliding_window=sliding_window,
        config=config,
    )


def _run_decode(problem, config=None, sliding_window=None, num_splits=None) -> torch.Tensor:
    out = torch.full_like(problem.query, float("nan"))
    device = problem.query.device
    return paged_decode(
        *problem.kernel_args(),
        out,
        max_context_len=problem.max_context_len,
        scale=problem.scale,
        k_scale=checked_scale(problem.k_scale, "k_scale", device),
        v_scale=checked_scale(problem.v_scale, "v_scale", device),
        sliding_window=sliding_window,
        config=config,
        num_splits=num_splits,
    )


def _assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    error = relative_error(out, ref)
    assert error < TOLERANCE[dtype], f"relative error {error:.2e}"


@pytest.mark.parametrize(
    ("dtype", "head_dim"),
    [(torch.float16, d) for d in (64, 80, 96, 128, 256)]
    + [(torch.float32, 64), (torch.float32, 96)],
)
def test_prefill_head_dims_and_dtypes(dtype, head_dim):
    problem = _problem(PREFILL_Q, PREFILL_CTX, head_dim=head_dim, dtype=dtype)
    _assert_close(_run_prefill(problem), _reference(problem), dtype)


@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (6, 2), (5, 1)])
@pytest.mark.parametrize("page", [16, 32])
def test_prefill_gqa_and_page_sizes(heads, page):
    problem = _problem(PREFILL_Q, PREFILL_CTX, heads=heads, page=page)
    _assert_close(_run_prefill(problem), _reference(problem), torch.float16)


@pytest.mark.parametrize(("block_m", "block_n"), [(16, 16), (32, 32), (64, 16), (16, 64)])
def test_prefill_block_sizes(block_m, block_n):
    problem = _problem(PREFILL_Q, PREFILL_CTX, heads=(6, 2), seed=1)
    config = PrefillConfig(block_m=block_m, block_n=block_n, num_warps=4, num_stages=1)
    _assert_close(_run_prefill(problem, config), _reference(problem), torch.float16)


@pytest.mark.parametrize("window", [1, 8, 30])
def test_prefill_sliding_window(window):
    problem = _problem(PREFILL_Q, PREFILL_CTX, seed=2)
    out = _run_prefill(problem, sliding_window=window)
    _assert_close(out, _reference(problem, window), torch.float16)


# bf16 queries run their products with an fp8 cache in fp16 (a one-instruction conversion of
# the cache tiles on Hopper), which the interpreter also computes correctly.
FP8_QUERY_DTYPES = pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])


@pytest.mark.parametrize("head_dim", [64, 96])
@FP8_QUERY_DTYPES
def test_prefill_fp8_cache(head_dim, dtype):
    problem = _problem(PREFILL_Q, PREFILL_CTX, head_dim=head_dim, kv_fp8=True, seed=3, dtype=dtype)
    out = _run_prefill(problem)
    assert out.dtype == dtype
    _assert_close(out, _reference(problem), dtype)


def _decode_problem(ctx=DECODE_CTX, **kw) -> PagedProblem:
    return _problem([1] * len(ctx), ctx, **kw)


@pytest.mark.parametrize(
    ("dtype", "head_dim"),
    [(torch.float16, d) for d in (64, 80, 96, 128, 256)]
    + [(torch.float32, 64), (torch.float32, 80)],
)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_decode_head_dims_and_dtypes(dtype, head_dim, num_splits):
    problem = _decode_problem(head_dim=head_dim, dtype=dtype)
    out = _run_decode(problem, num_splits=num_splits)
    _assert_close(out, _reference(problem), dtype)


@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (6, 2), (32, 1)])
@pytest.mark.parametrize("page", [16, 32])
def test_decode_gqa_and_page_sizes(heads, page):
    problem = _decode_problem(heads=heads, page=page, seed=4)
    _assert_close(_run_decode(problem, num_splits=2), _reference(problem), torch.float16)


@pytest.mark.parametrize("num_splits", [1, 2, 4, 7, None])
@pytest.mark.parametrize("block_n", [16, 32])
def test_decode_splits_and_block_sizes(num_splits, block_n):
    problem = _decode_problem(seed=5)
    config = DecodeConfig(
        block_n=block_n,
        num_warps=4,
        num_stages=1,
        programs_per_sm=4,
        min_split_tokens=32,
        max_splits=8,
    )
    out = _run_decode(problem, config, num_splits=num_splits)
    _assert_close(out, _reference(problem), torch.float16)


@pytest.mark.parametrize("window", [1, 20, 90])
@pytest.mark.parametrize("num_splits", [1, 4])
def test_decode_sliding_window(window, num_splits):
    problem = _decode_problem(seed=6)
    out = _run_decode(problem, sliding_window=window, num_splits=num_splits)
    _assert_close(out, _reference(problem, window), torch.float16)


@pytest.mark.parametrize("num_splits", [1, 3])
@FP8_QUERY_DTYPES
def test_decode_fp8_cache(num_splits, dtype):
    problem = _decode_problem(kv_fp8=True, seed=7, dtype=dtype)
    out = _run_decode(problem, num_splits=num_splits)
    assert out.dtype == dtype
    _assert_close(out, _reference(problem), dtype)


def test_decode_skips_sequences_without_a_query_token():
    problem = _problem([1, 0, 1, 0], [5, 9, 70, 3], seed=8)
    for num_splits in (1, 3):
        _assert_close(
            _run_decode(problem, num_splits=num_splits), _reference(problem), torch.float16
        )


def test_decode_covers_contexts_longer_than_planned():
    problem = _decode_problem(seed=9)
    problem.max_context_len = 64  # the last split must still reach the 250-token context
    _assert_close(_run_decode(problem, num_splits=3), _reference(problem), torch.float16)


@pytest.mark.parametrize(("q_lens", "ctx"), [(PREFILL_Q, PREFILL_CTX), ([1] * 6, DECODE_CTX)])
def test_paged_attention_dispatches_and_fills_out(q_lens, ctx):
    problem = _problem(q_lens, ctx, heads=(8, 2), seed=10)
    out = torch.full_like(problem.query, float("nan"))
    result = paged_attention(
        *problem.kernel_args(),
        max_query_len=problem.max_query_len,
        max_context_len=problem.max_context_len,
        scale=problem.scale,
        out=out,
    )
    assert result is out
    _assert_close(out, _reference(problem), torch.float16)


def test_paged_attention_empty_batch():
    problem = _problem([0], [4])
    out = paged_attention(*problem.kernel_args(), max_query_len=1, max_context_len=4, scale=1.0)
    assert out.shape == (0, 4, 64)


def _bad(problem: PagedProblem, **changes):
    args = dict(
        zip(
            ("query", "k_cache", "v_cache", "block_tables", "context_lens", "cu_seqlens_q"),
            problem.kernel_args(),
            strict=True,
        )
    )
    kwargs = dict(
        max_query_len=problem.max_query_len,
        max_context_len=problem.max_context_len,
        scale=problem.scale,
    )
    for key, value in changes.items():
        (args if key in args else kwargs)[key] = value
    return args, kwargs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: {"query": p.query[:, :, :1].squeeze(-1)}, "query must be"),
        (lambda p: {"query": p.query.to(torch.int32)}, "query must be"),
        (lambda p: {"k_cache": p.k_cache.float()}, "caches must share"),
        (lambda p: {"v_cache": p.v_cache[:, :, :1]}, "k_cache and v_cache must both"),
        (lambda p: {"query": p.query[:, :3]}, "not a multiple"),
        (lambda p: {"context_lens": p.context_lens.long()}, "context_lens must be"),
        (lambda p: {"cu_seqlens_q": p.cu_seqlens_q[:-1]}, "cu_seqlens_q must be"),
        (lambda p: {"block_tables": p.block_tables[:1]}, "block_tables must be"),
        (lambda p: {"max_query_len": 0}, "max_query_len"),
        (lambda p: {"sliding_window": 0}, "sliding_window"),
        (lambda p: {"k_scale": 0.5}, "k_scale must be"),
        (lambda p: {"out": p.query[:1].clone()}, "out must be"),
    ],
)
def test_paged_attention_rejects_bad_arguments(change, message):
    problem = _problem(PREFILL_Q, PREFILL_CTX)
    args, kwargs = _bad(problem, **change(problem))
    with pytest.raises(ValueError, match=message):
        paged_attention(*args.values(), **kwargs)
