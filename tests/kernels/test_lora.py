"""`lora_shrink` / `lora_expand` against their references over both regimes (long same-adapter
segments and one adapter per token), ranks, slice counts, adapter counts and base-model tokens."""

from __future__ import annotations

import pytest
import torch

from loraplex.kernels import LoRAKernelMeta, lora_expand, lora_shrink
from loraplex.kernels.lora_expand import ExpandConfig
from loraplex.kernels.lora_shrink import ShrinkConfig
from tests.kernels.lora_cases import check_expand, check_shrink, make_lora_batch

WIDTHS = {1: (40,), 2: (48, 48), 3: (64, 16, 16)}


def _batch(prefill, *, slices=3, rank=16, adapters=4, in_features=96, dtype=torch.float16, **kw):
    kw.setdefault("num_tokens", 45 if prefill else 19)
    return make_lora_batch(
        kw.pop("num_tokens"),
        in_features,
        WIDTHS[slices],
        rank,
        adapters,
        num_slots=kw.pop("num_slots", 8),
        dtype=dtype,
        prefill=prefill,
        **kw,
    )


@pytest.mark.parametrize("prefill", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("rank", [8, 16, 64, 128])
def test_shrink_ranks_and_dtypes(prefill, dtype, rank):
    check_shrink(_batch(prefill, rank=rank, dtype=dtype, base_every=5), prefill)


@pytest.mark.parametrize("prefill", [True, False])
@pytest.mark.parametrize("slices", [1, 2, 3])
@pytest.mark.parametrize("adapters", [1, 3, 8])
def test_shrink_slices_and_adapter_counts(prefill, slices, adapters):
    batch = _batch(prefill, slices=slices, adapters=adapters, base_every=4, seed=adapters)
    check_shrink(batch, prefill)


@pytest.mark.parametrize(("block_m", "block_k"), [(16, 16), (16, 64), (32, 32), (64, 128)])
@pytest.mark.parametrize("in_features", [96, 128])
def test_shrink_block_sizes(block_m, block_k, in_features):
    batch = _batch(True, in_features=in_features, base_every=7, seed=3)
    check_shrink(batch, True, ShrinkConfig(block_m, block_k, num_warps=4, num_stages=1))


@pytest.mark.parametrize("prefill", [True, False])
@pytest.mark.parametrize(("block_k", "k_per_program"), [(16, 32), (32, 32), (32, 40), (64, 64)])
@pytest.mark.parametrize("in_features", [96, 128])
def test_shrink_split_over_input_features(prefill, block_k, k_per_program, in_features):
    batch = _batch(prefill, in_features=in_features, base_every=5, seed=7)
    config = ShrinkConfig(16, block_k, num_warps=4, num_stages=1, k_per_program=k_per_program)
    y, _ = check_shrink(batch, prefill, config)
    base_rows = batch.token_lora < 0
    split = -(-in_features // (-(-k_per_program // block_k) * block_k)) > 1
    if split:  # a split launch zeroes the output first
        computed = torch.full_like(y, float("nan"))
        meta = LoRAKernelMeta.build(batch.token_lora, 8, prefill=prefill)
        lora_shrink(batch.x, batch.lora_a, meta, computed, config=config)
        assert (computed[:, base_rows] == 0).all()


def test_shrink_into_model_dtype():
    check_shrink(_batch(False, base_every=3), False, y_dtype=torch.float16)


@pytest.mark.parametrize("prefill", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("rank", [8, 16, 64, 128])
def test_expand_ranks_and_dtypes(prefill, dtype, rank):
    check_expand(_batch(prefill, rank=rank, dtype=dtype, base_every=5), prefill)


@pytest.mark.parametrize("prefill", [True, False])
@pytest.mark.parametrize("slices", [1, 2, 3])
@pytest.mark.parametrize("adapters", [1, 3, 8])
def test_expand_slices_and_adapter_counts(prefill, slices, adapters):
    batch = _batch(prefill, slices=slices, adapters=adapters, base_every=4, seed=adapters)
    check_expand(batch, prefill)


@pytest.mark.parametrize("prefill", [True, False])
@pytest.mark.parametrize("rank", [8, 16, 64])
@pytest.mark.parametrize("k_per_program", [0, 32])
@pytest.mark.parametrize("slices", [1, 3])
def test_per_token_kernels(prefill, rank, k_per_program, slices):
    """The one-program-per-token (BGMV) variants, chosen by a config flag."""
    batch = _batch(prefill, rank=rank, slices=slices, base_every=4, seed=rank + slices)
    shrink = ShrinkConfig(16, 32, 4, 1, k_per_program=k_per_program, per_token=True)
    check_shrink(batch, prefill, shrink)
    check_expand(batch, prefill, ExpandConfig(16, 32, 4, 1, per_token=True))


@pytest.mark.parametrize(("block_m", "block_n"), [(16, 16), (16, 128), (32, 32), (64, 64)])
def test_expand_block_sizes(block_m, block_n):
    batch = _batch(True, base_every=6, seed=4)
    check_expand(batch, True, ExpandConfig(block_m, block_n, num_warps=4, num_stages=1))


def test_all_base_model_tokens_change_nothing():
    batch = _batch(False, base_every=1)
    check_expand(batch, False)


def test_more_slots_than_tokens():
    batch = _batch(False, num_tokens=3, adapters=3, num_slots=64, seed=5)
    check_expand(batch, False)


def test_shrink_rejects_bad_arguments():
    batch = _batch(False)
    meta = LoRAKernelMeta.build(batch.token_lora, 8)
    y = torch.empty(3, 19, 16)
    with pytest.raises(ValueError, match="1 to 3 slices"):
        lora_shrink(batch.x, batch.lora_a * 2, meta, torch.empty(6, 19, 16))
    with pytest.raises(ValueError, match="every lora_a slice"):
        lora_shrink(batch.x, (batch.lora_a[0], batch.lora_a[1].float(), batch.lora_a[2]), meta, y)
    with pytest.raises(ValueError, match="out must be"):
        lora_shrink(batch.x, batch.lora_a, meta, y[:, :, :8])
    with pytest.raises(ValueError, match="meta was built for"):
        lora_shrink(batch.x[:5], batch.lora_a, meta, y[:, :5])
    with pytest.raises(ValueError, match="meta allows 9 slots"):
        lora_shrink(batch.x, batch.lora_a, LoRAKernelMeta.build(batch.token_lora, 9), y)
    with pytest.raises(ValueError, match="lora_a must be"):
        lora_shrink(batch.x[:, :64], batch.lora_a, meta, y)


def test_expand_rejects_bad_arguments():
    batch = _batch(False)
    meta = LoRAKernelMeta.build(batch.token_lora, 8)
    y = torch.zeros(3, 19, 16)
    out = torch.zeros(19, batch.out_features, dtype=torch.float16)
    with pytest.raises(ValueError, match="one offset each"):
        lora_expand(y, batch.lora_b, meta, out, batch.slice_offsets[:2])
    with pytest.raises(ValueError, match="does not fit"):
        lora_expand(y, batch.lora_b, meta, out, (0, 0, batch.out_features - 10))
    with pytest.raises(ValueError, match="y must be"):
        lora_expand(y[:2], batch.lora_b, meta, out, batch.slice_offsets)
    with pytest.raises(ValueError, match="each lora_b slice"):
        lora_expand(y[:, :, :8], batch.lora_b, meta, out, batch.slice_offsets)
    with pytest.raises(ValueError, match="out must be"):
        lora_expand(y, batch.lora_b, meta, out[:4], batch.slice_offsets)
    with pytest.raises(ValueError, match="contiguous"):
        lora_expand(y, batch.lora_b, meta, out.t().contiguous().t(), batch.slice_offsets)
