"""Launch parameter tables: defaults for every kernel, per-GPU overrides, head-dim buckets."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from loraplex.kernels import launch_config as lc
from loraplex.kernels.lora_expand import ExpandConfig
from loraplex.kernels.lora_shrink import ShrinkConfig
from loraplex.kernels.paged_decode import DecodeConfig, split_plan
from loraplex.kernels.paged_prefill import PrefillConfig

CPU = torch.device("cpu")


def test_every_config_file_fills_every_field():
    """Each table (the default and every GPU's) resolves to complete configs."""
    folder = resources.files("loraplex.kernels").joinpath("configs")
    names = [p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json")]
    assert lc.DEFAULT_TABLE in names
    for name in names:
        table = lc._merged_table(name)
        json.loads(folder.joinpath(f"{name}.json").read_text())
        for head_dim in table["paged_prefill"]:
            PrefillConfig(**table["paged_prefill"][head_dim])
            DecodeConfig(**table["paged_decode"][head_dim])
        for key in table["paged_decode"]:  # head dims and their fp8-cache variants
            DecodeConfig(**table["paged_decode"][key])
        for regime in ("decode", "prefill"):
            ShrinkConfig(**table["lora_shrink"][regime])
            ExpandConfig(**table["lora_expand"][regime])


@pytest.mark.parametrize(
    ("head_dim", "bucket"), [(64, "64"), (80, "128"), (96, "128"), (256, "256")]
)
def test_head_dims_round_up_to_a_bucket(head_dim, bucket):
    assert lc.head_dim_bucket("paged_prefill", head_dim, CPU) == bucket


def test_oversized_head_dim_and_unknown_key_are_rejected():
    with pytest.raises(ValueError, match="larger than any"):
        lc.head_dim_bucket("paged_decode", 512, CPU)
    with pytest.raises(KeyError, match="no launch config"):
        lc.launch_config("lora_shrink", "unknown", CPU)


def test_gpu_table_overrides_only_what_it_names(monkeypatch):
    tables = {
        "default": {"lora_shrink": {"decode": {"block_m": 16, "block_k": 64}}},
        "Some_GPU": {"lora_shrink": {"decode": {"block_k": 256}}},
    }
    monkeypatch.setattr(lc, "_read_table", lambda name: tables.get(name, {}))
    lc._merged_table.cache_clear()
    try:
        assert lc._merged_table("Some_GPU")["lora_shrink"]["decode"] == {
            "block_m": 16,
            "block_k": 256,
        }
    finally:
        lc._merged_table.cache_clear()


def test_an_fp8_cache_takes_its_variant_where_the_table_has_one(monkeypatch):
    decode = {"num_warps": 4, "num_stages": 2, "programs_per_sm": 2}
    decode |= {"min_split_tokens": 256, "max_splits": 64}
    tables = {
        "default": {
            "paged_decode": {
                "64": {"block_n": 64, **decode},
                "128": {"block_n": 64, **decode},
                "128-fp8": {"block_n": 128, **decode},
            }
        }
    }
    monkeypatch.setattr(lc, "_read_table", lambda name: tables.get(name, {}))
    lc._merged_table.cache_clear()
    try:
        assert DecodeConfig.for_head_dim(128, CPU).block_n == 64
        assert DecodeConfig.for_head_dim(128, CPU, kv_fp8=True).block_n == 128
        assert DecodeConfig.for_head_dim(64, CPU, kv_fp8=True).block_n == 64  # no variant
        assert lc.head_dim_bucket("paged_decode", 100, CPU) == "128"
    finally:
        lc._merged_table.cache_clear()


def test_cpu_uses_the_default_table():
    assert lc.device_table_name(CPU) == "default"


@pytest.mark.parametrize(
    ("seqs", "kv_heads", "context", "expected_splits"),
    [(64, 8, 4096, 1), (1, 8, 32768, 32), (1, 8, 300, 1), (4, 8, 2048, 8)],
)
def test_split_plan_fills_the_gpu_for_long_small_batches(seqs, kv_heads, context, expected_splits):
    config = DecodeConfig(64, 4, 2, programs_per_sm=2, min_split_tokens=256, max_splits=64)
    splits, tokens = split_plan(seqs, kv_heads, context, config, num_sms=132)
    assert splits == expected_splits
    assert tokens % config.block_n == 0 or splits == 1
    assert splits * tokens >= context > (splits - 1) * tokens


def test_float32_inputs_get_smaller_tiles_than_the_tuned_two_byte_ones():
    """The H200 prefill entry for head dim 128 needs 262 KB of shared memory with float32
    inputs (an SM has 227 KB); float32 gets half the tile and a stage fewer."""
    tuned = {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 3}
    assert lc.for_element_size(tuned, 2, "block_n") == tuned
    assert lc.for_element_size(tuned, 4, "block_n") == {**tuned, "block_n": 64, "num_stages": 2}
    small = {"block_k": 16, "num_stages": 1}
    assert lc.for_element_size(small, 4, "block_k") == small


def test_kernel_configs_are_fitted_to_the_input_dtype(monkeypatch):
    table = {
        "paged_prefill": {"128": {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3}},
        "lora_shrink": {
            "prefill": {"block_m": 64, "block_k": 256, "num_warps": 4, "num_stages": 3}
        },
    }
    monkeypatch.setattr(lc, "_merged_table", lambda name: table)
    assert PrefillConfig.for_head_dim(128, CPU, 4).block_n == 32
    assert PrefillConfig.for_head_dim(128, CPU, 2).block_n == 64

    class Meta:
        prefill = True

    assert ShrinkConfig.for_meta(Meta(), CPU, 4).block_k == 128
    assert ShrinkConfig.for_meta(Meta(), CPU, 2).num_stages == 3
