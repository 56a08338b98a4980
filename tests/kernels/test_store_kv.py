"""`store_kv` against `store_kv_ref`: every written slot equal, every other cache entry kept."""

from __future__ import annotations

import pytest
import torch

from loraplex.kernels import store_kv
from loraplex.kernels.reference import FP8_DTYPE, store_kv_ref


def _inputs(num_tokens, num_kv_heads, head_dim, page, cache_dtype, input_dtype, device, seed):
    generator = torch.Generator().manual_seed(seed)
    num_blocks = 2 * num_tokens // page + 3
    # key and value as views into a fused qkv output: a token stride larger than the row.
    qkv = torch.randn(num_tokens, 3, num_kv_heads, head_dim, generator=generator)
    if cache_dtype == FP8_DTYPE:
        # Values an fp8 cell holds exactly (times the power-of-two scales below), plus some
        # beyond its range that must saturate: the Triton 3.6 interpreter rounds float -> fp8
        # wrongly where rounding carries into the exponent, so CPU runs avoid rounding.
        qkv = (qkv * 40).to(FP8_DTYPE).float()
        qkv[::5, :, 0, 0] = 5000.0
        qkv[1::5, :, 0, 1] = -5000.0
    qkv = qkv.to(input_dtype).to(device)
    key, value = qkv[:, 0], qkv[:, 1]
    slots = torch.randperm(num_blocks * page, generator=generator)[:num_tokens]
    slots[::4] = -1
    shape = (num_blocks, page, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=generator).to(cache_dtype).to(device)
    v_cache = torch.randn(shape, generator=generator).to(cache_dtype).to(device)
    return key, value, k_cache, v_cache, slots.to(device)


def _check(cache_dtype, input_dtype, num_kv_heads=2, head_dim=64, page=16, device="cpu", n=37):
    key, value, k_cache, v_cache, slots = _inputs(
        n, num_kv_heads, head_dim, page, cache_dtype, input_dtype, device, seed=head_dim + page
    )
    fp8 = cache_dtype == FP8_DTYPE
    k_scale = torch.tensor(0.5, device=device) if fp8 else None
    v_scale = torch.tensor(2.0, device=device) if fp8 else None
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    store_kv(key, value, k_cache, v_cache, slots, k_scale, v_scale)
    store_kv_ref(key, value, k_ref, v_ref, slots, k_scale, v_scale)
    assert torch.equal(k_cache.view(torch.uint8), k_ref.view(torch.uint8))
    assert torch.equal(v_cache.view(torch.uint8), v_ref.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize("num_kv_heads", [1, 3])
def test_store_kv_writes_slots_and_skips_padding(dtype, head_dim, num_kv_heads):
    _check(dtype, dtype, num_kv_heads, head_dim)


@pytest.mark.parametrize("page", [16, 32])
@pytest.mark.parametrize("input_dtype", [torch.float16, torch.float32])
def test_store_kv_quantizes_to_fp8(page, input_dtype):
    _check(FP8_DTYPE, input_dtype, page=page)


def test_store_kv_without_tokens_changes_nothing():
    _check(torch.float16, torch.float16, n=0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key": lambda k: k[:, :1]}, "key and value must be"),
        ({"value": lambda v: v.float()}, "key and value must be"),
        ({"k_cache": lambda c: c.float()}, "caches must be"),
        ({"k_cache": lambda c: c[:, :, :1]}, "caches must be"),
        ({"slots": lambda s: s.int()}, "slot_mapping must be int64"),
        ({"slots": lambda s: s[:-1]}, "slot_mapping must be int64"),
        ({"key": lambda k: k.transpose(1, 2).contiguous().transpose(1, 2)}, "contiguous last"),
    ],
)
def test_store_kv_rejects_bad_arguments(change, message):
    key, value, k_cache, v_cache, slots = _inputs(
        8, 2, 64, 16, torch.float16, torch.float16, "cpu", 0
    )
    args = {"key": key, "value": value, "k_cache": k_cache, "v_cache": v_cache, "slots": slots}
    for name, edit in change.items():
        args[name] = edit(args[name])
    with pytest.raises(ValueError, match=message):
        store_kv(*args.values())


def test_store_kv_rejects_a_float_scale():
    key, value, _, _, slots = _inputs(8, 2, 64, 16, torch.float16, torch.float16, "cpu", 0)
    cache = torch.zeros(4, 16, 2, 64, dtype=FP8_DTYPE)
    with pytest.raises(ValueError, match="k_scale must be"):
        store_kv(key, value, cache, cache.clone(), slots, 0.5, torch.tensor(1.0))
