"""The kernels compiled on a GPU at real sizes (`pytest -m gpu`), bf16 and fp16, fp8 KV, against
the references in float32. Selected without a GPU, these fail rather than skip."""

from __future__ import annotations

import pytest
import torch

from loraplex.kernels import paged_attention, store_kv
from loraplex.kernels.paged_decode import paged_decode
from loraplex.kernels.paged_kv import checked_scale
from loraplex.kernels.reference import FP8_DTYPE, paged_attention_ref, store_kv_ref
from tests.kernels.lora_cases import check_expand, check_shrink, make_lora_batch
from tests.kernels.paged_cases import make_paged_problem, relative_error

# The marker alone selects; the fixture (tests/conftest.py) makes a GPU-less run fail clearly.
pytestmark = pytest.mark.gpu

CUDA = "cuda"
DTYPES = [torch.bfloat16, torch.float16]
# Prefill: a one-token prompt, chunks after cached prefixes, whole prompts, an idle sequence.
PREFILL_Q = [1, 300, 1024, 77, 0, 512]
PREFILL_CTX = [1, 2300, 1024, 4000, 100, 600]
LLAMA_HEADS = (32, 8)


def _decode_context_lens(batch: int, longest: int, seed: int = 0) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, longest, (batch,), generator=generator)
    lens[0] = longest
    return lens.tolist()


def _attention_error(problem, window=None, num_splits=None) -> float:
    out = torch.full_like(problem.query, float("nan"))
    if num_splits is None:
        paged_attention(
            *problem.kernel_args(),
            max_query_len=problem.max_query_len,
            max_context_len=problem.max_context_len,
            scale=problem.scale,
            k_scale=problem.k_scale,
            v_scale=problem.v_scale,
            sliding_window=window,
            out=out,
        )
    else:
        paged_decode(
            *problem.kernel_args(),
            out,
            max_context_len=problem.max_context_len,
            scale=problem.scale,
            k_scale=checked_scale(problem.k_scale, "k_scale", out.device),
            v_scale=checked_scale(problem.v_scale, "v_scale", out.device),
            sliding_window=window,
            num_splits=num_splits,
        )
    ref = paged_attention_ref(
        *problem.kernel_args(),
        scale=problem.scale,
        k_scale=problem.k_scale,
        v_scale=problem.v_scale,
        sliding_window=window,
    )
    return relative_error(out, ref)


def _problem(q_lens, ctx, dtype, *, heads=LLAMA_HEADS, head_dim=128, page=16, **kw):
    return make_paged_problem(
        q_lens,
        ctx,
        num_heads=heads[0],
        num_kv_heads=heads[1],
        head_dim=head_dim,
        page_size=page,
        dtype=dtype,
        device=CUDA,
        **kw,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 80, 96, 128, 256])
def test_prefill(dtype, head_dim):
    problem = _problem(PREFILL_Q, PREFILL_CTX, dtype, head_dim=head_dim)
    assert _attention_error(problem) < 1e-2


@pytest.mark.parametrize("heads", [(32, 32), (28, 4), (32, 1)])
@pytest.mark.parametrize("page", [16, 32])
def test_prefill_gqa_and_pages(heads, page):
    problem = _problem(PREFILL_Q, PREFILL_CTX, torch.bfloat16, heads=heads, page=page)
    assert _attention_error(problem) < 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_prefill_fp8_cache(dtype, head_dim):
    problem = _problem(PREFILL_Q, PREFILL_CTX, dtype, head_dim=head_dim, kv_fp8=True)
    assert _attention_error(problem) < 1e-2


def test_prefill_sliding_window():
    problem = _problem(PREFILL_Q, PREFILL_CTX, torch.bfloat16)
    assert _attention_error(problem, window=256) < 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [64, 80, 96, 128, 256])
def test_decode(dtype, head_dim):
    ctx = _decode_context_lens(48, 6000)
    problem = _problem([1] * len(ctx), ctx, dtype, head_dim=head_dim)
    assert _attention_error(problem) < 1e-2


@pytest.mark.parametrize("num_splits", [1, 5, None])
@pytest.mark.parametrize("batch", [1, 64])
def test_decode_splits(num_splits, batch):
    ctx = _decode_context_lens(batch, 20000 if batch == 1 else 3000, seed=1)
    problem = _problem([1] * batch, ctx, torch.bfloat16)
    assert _attention_error(problem, num_splits=num_splits) < 1e-2


@pytest.mark.parametrize("heads", [(32, 32), (28, 4), (32, 1)])
@pytest.mark.parametrize("page", [16, 32])
def test_decode_gqa_and_pages(heads, page):
    ctx = _decode_context_lens(16, 5000, seed=2)
    problem = _problem([1] * 16, ctx, torch.bfloat16, heads=heads, page=page)
    assert _attention_error(problem) < 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [2, 64])
def test_decode_fp8_cache(dtype, batch):
    ctx = _decode_context_lens(batch, 9000, seed=3)
    problem = _problem([1] * batch, ctx, dtype, kv_fp8=True)
    assert _attention_error(problem) < 1e-2


@pytest.mark.parametrize("batch", [2, 64])
def test_decode_sliding_window(batch):
    ctx = _decode_context_lens(batch, 9000, seed=4)
    problem = _problem([1] * batch, ctx, torch.bfloat16)
    assert _attention_error(problem, window=1000) < 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cache_dtype", ["model", "fp8"])
def test_store_kv(dtype, cache_dtype):
    generator = torch.Generator(device=CUDA).manual_seed(0)
    num_tokens, shape = 4096, (1000, 16, 8, 128)
    qkv = torch.randn(num_tokens, 3, 8, 128, device=CUDA, generator=generator).to(dtype) * 30
    slots = torch.randperm(16000, device=CUDA, generator=generator)[:num_tokens]
    slots[::9] = -1
    cache_type = FP8_DTYPE if cache_dtype == "fp8" else dtype
    k_cache = torch.randn(shape, device=CUDA, generator=generator).to(cache_type)
    v_cache = torch.randn(shape, device=CUDA, generator=generator).to(cache_type)
    scales = [torch.tensor(s, device=CUDA) for s in (0.07, 0.3)] if cache_dtype == "fp8" else []
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    store_kv(qkv[:, 0], qkv[:, 1], k_cache, v_cache, slots, *scales)
    store_kv_ref(qkv[:, 0], qkv[:, 1], k_ref, v_ref, slots, *scales)
    assert torch.equal(k_cache.view(torch.uint8), k_ref.view(torch.uint8))
    assert torch.equal(v_cache.view(torch.uint8), v_ref.view(torch.uint8))


def _lora_batch(prefill, rank, dtype, widths=(4096, 1024, 1024), in_features=4096, adapters=None):
    return make_lora_batch(
        2048 if prefill else 256,
        in_features,
        widths,
        rank,
        adapters or (4 if prefill else 64),
        num_slots=128,
        dtype=dtype,
        prefill=prefill,
        base_every=7,
        device=CUDA,
    )


@pytest.mark.parametrize("prefill", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rank", [8, 16, 64, 128])
def test_lora_shrink_and_expand(prefill, dtype, rank):
    batch = _lora_batch(prefill, rank, dtype)
    check_shrink(batch, prefill)
    check_expand(batch, prefill)


@pytest.mark.parametrize("prefill", [True, False])
def test_lora_mlp_shapes(prefill):
    gate_up = _lora_batch(prefill, 16, torch.bfloat16, widths=(14336, 14336), adapters=8)
    check_expand(gate_up, prefill)
    down = _lora_batch(prefill, 16, torch.bfloat16, widths=(4096,), in_features=14336)
    check_expand(down, prefill)


@pytest.mark.parametrize("rank", [16, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_lora_per_token_kernels(rank, dtype):
    from loraplex.kernels.lora_expand import ExpandConfig
    from loraplex.kernels.lora_shrink import ShrinkConfig

    batch = _lora_batch(False, rank, dtype, adapters=128)
    check_shrink(batch, False, ShrinkConfig(16, 256, 4, 3, k_per_program=1024, per_token=True))
    check_expand(batch, False, ExpandConfig(16, 256, 4, 1, per_token=True))
