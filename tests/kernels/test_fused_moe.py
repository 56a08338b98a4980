"""`fused_moe` (under the Triton interpreter on CPU) against `fused_moe_ref`, and the expert
alignment it runs on: dtypes, top-k, ragged sizes, idle experts, one busy expert, fp8 experts,
poisoned buffers and bad arguments."""

from __future__ import annotations

from importlib import resources

import pytest
import torch

from loraplex.kernels import fused_moe
from loraplex.kernels import launch_config as lc
from loraplex.kernels.fused_moe import MoEConfig
from loraplex.kernels.fused_moe_align import align_by_expert, max_padded_rows
from loraplex.kernels.reference import align_by_expert_ref, fused_moe_ref
from tests.kernels.moe_cases import TOLERANCE, make_moe_problem, moe_error

DTYPES = [torch.float16, torch.float32]
SMALL_BLOCKS = MoEConfig(block_m=16, block_n=32, block_k=32, num_warps=4, num_stages=1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("top_k", [1, 2, 4])
@pytest.mark.parametrize("num_tokens", [1, 7, 53])
def test_matches_reference(dtype, top_k, num_tokens):
    problem = make_moe_problem(num_tokens, top_k, 8, 64, 48, dtype, seed=top_k + num_tokens)
    assert moe_error(problem) < TOLERANCE[dtype]


@pytest.mark.parametrize(
    ("hidden_size", "inter"), [(40, 24), (96, 80), (128, 64)], ids=["ragged", "odd", "even"]
)
@pytest.mark.parametrize(
    "config",
    [
        SMALL_BLOCKS,
        MoEConfig(block_m=32, block_n=16, block_k=16, num_warps=4, num_stages=1),
        MoEConfig(block_m=64, block_n=64, block_k=64, num_warps=4, num_stages=1),
    ],
    ids=["16x32x32", "32x16x16", "64x64x64"],
)
def test_block_sizes_and_ragged_shapes(hidden_size, inter, config):
    problem = make_moe_problem(37, 2, 6, hidden_size, inter, torch.float16, seed=hidden_size)
    assert moe_error(problem, config) < TOLERANCE[torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_experts_that_receive_no_tokens(dtype):
    problem = make_moe_problem(29, 2, 16, 64, 32, dtype, experts_used=[1, 4, 5, 11], seed=2)
    assert set(problem.topk_ids.unique().tolist()) == {1, 4, 5, 11}
    assert moe_error(problem, SMALL_BLOCKS) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("top_k", "experts"), [(1, [5]), (2, [2, 6])])
def test_all_tokens_to_the_same_experts(dtype, top_k, experts):
    """Every token picks the same experts: one long group spanning many blocks."""
    problem = make_moe_problem(70, top_k, 8, 64, 32, dtype, experts_used=experts, seed=3)
    assert problem.topk_ids.unique().tolist() == experts
    assert moe_error(problem, SMALL_BLOCKS) < TOLERANCE[dtype]


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_fp8_experts_with_per_channel_scales(top_k):
    problem = make_moe_problem(21, top_k, 8, 64, 48, torch.float16, fp8=True, seed=top_k)
    assert problem.w13.dtype == torch.float8_e4m3fn
    assert moe_error(problem) < TOLERANCE[torch.float16]
    # The scales matter: the same fp8 codes without them give a different result.
    args = (problem.hidden, problem.w13, problem.w2, problem.topk_weights, problem.topk_ids)
    unscaled = fused_moe_ref(
        *args,
        w13_scale=torch.ones_like(problem.w13_scale),
        w2_scale=torch.ones_like(problem.w2_scale),
    )
    assert not torch.allclose(unscaled, fused_moe_ref(*args, **problem.scales()), atol=1e-2)


def test_every_buffer_the_launch_allocates_may_start_as_garbage(monkeypatch):
    """Buffers from torch.empty arrive filled with NaN; the output must not see any of it."""
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):
        tensor = real_empty(*args, **kwargs)
        return tensor.fill_(float("nan") if tensor.is_floating_point() else -7)

    problem = make_moe_problem(33, 2, 8, 64, 40, torch.float32, seed=5)
    monkeypatch.setattr(torch, "empty", poisoned_empty)
    assert moe_error(problem, SMALL_BLOCKS) < TOLERANCE[torch.float32]


def test_top_k_weights_scale_each_choice():
    problem = make_moe_problem(9, 2, 4, 32, 32, torch.float32, seed=6)
    args = (problem.hidden, problem.w13, problem.w2)
    both = fused_moe(*args, problem.topk_weights, problem.topk_ids)
    first_only = problem.topk_weights.clone()
    first_only[:, 1] = 0
    first = fused_moe(*args, first_only, problem.topk_ids)
    second = fused_moe(*args, problem.topk_weights - first_only, problem.topk_ids)
    torch.testing.assert_close(first + second, both, rtol=1e-5, atol=1e-5)
    assert (first - both).abs().max() > 1e-2


def test_no_tokens_gives_an_empty_output():
    problem = make_moe_problem(0, 2, 4, 32, 16, torch.float16)
    args = (problem.hidden, problem.w13, problem.w2, problem.topk_weights, problem.topk_ids)
    out = fused_moe(*args)
    assert out.shape == (0, 32) and out.dtype == torch.float16


@pytest.mark.parametrize(
    ("num_tokens", "experts", "expected"), [(3, 64, "decode"), (4096, 8, "prefill")]
)
def test_launch_regime_follows_rows_per_expert(num_tokens, experts, expected):
    config = MoEConfig.for_problem(num_tokens * 2, experts, torch.device("cpu"))
    assert config == MoEConfig(**lc.launch_config("fused_moe", expected, torch.device("cpu")))


def test_every_config_table_gives_complete_moe_configs():
    folder = resources.files("loraplex.kernels").joinpath("configs")
    for path in folder.iterdir():
        table = lc._merged_table(path.name.removesuffix(".json"))
        for regime in ("decode", "prefill"):
            config = MoEConfig(**table["fused_moe"][regime])
            assert config.block_m >= 16 and config.block_n >= 16 and config.block_k >= 16


@pytest.mark.parametrize("block_m", [1, 4, 16])
def test_alignment_groups_every_assignment_once_in_its_experts_blocks(block_m):
    generator = torch.Generator().manual_seed(block_m)
    num_experts, top_k = 6, 3
    ids = torch.stack([torch.randperm(num_experts, generator=generator)[:top_k] for _ in range(23)])
    ids[ids == 4] = 0  # expert 4 gets nothing
    blocks = align_by_expert(ids.to(torch.int32), num_experts, block_m)
    num_assignments = ids.numel()
    flat = ids.reshape(-1)
    num_padded = int(blocks.num_padded)
    assert num_padded % block_m == 0
    assert blocks.num_blocks * block_m == blocks.sorted_ids.shape[0]
    assert blocks.sorted_ids.shape[0] >= num_padded
    assert max_padded_rows(num_assignments, num_experts, block_m) >= num_padded
    used = blocks.sorted_ids[:num_padded]
    real = used[used < num_assignments]
    assert sorted(real.tolist()) == list(range(num_assignments))
    assert (blocks.sorted_ids[num_padded:] == num_assignments).all()
    for block in range(blocks.num_blocks):
        rows = blocks.sorted_ids[block * block_m : (block + 1) * block_m]
        expert = int(blocks.block_experts[block])
        if block * block_m >= num_padded:
            assert expert == -1
            continue
        members = rows[rows < num_assignments].long()
        assert members.numel() > 0 and (flat[members] == expert).all()
        assert members.tolist() == sorted(members.tolist())  # order kept within an expert
    assert 4 not in blocks.block_experts.tolist()


def test_alignment_drops_out_of_range_ids():
    ids = torch.tensor([[0, 9], [-1, 1]], dtype=torch.int32)
    blocks = align_by_expert(ids, 2, 4)
    used = blocks.sorted_ids[: int(blocks.num_padded)]
    assert sorted(used[used < 4].tolist()) == [0, 3]


@pytest.mark.parametrize(
    ("num_tokens", "top_k", "num_experts", "block_m"),
    [(0, 2, 8, 16), (1, 1, 1, 16), (1, 2, 8, 16), (300, 2, 8, 16), (70, 4, 60, 64), (45, 3, 5, 4)],
)
def test_alignment_kernel_matches_reference_exactly(num_tokens, top_k, num_experts, block_m):
    """More than one chunk of assignments, a single expert, many experts, out-of-range ids."""
    generator = torch.Generator().manual_seed(num_tokens + num_experts)
    ids = torch.randint(0, num_experts, (num_tokens, top_k), generator=generator)
    if num_tokens > 3:
        ids[1, 0], ids[2, -1] = num_experts + 3, -1
    for dtype in (torch.int32, torch.int64):
        blocks = align_by_expert(ids.to(dtype), num_experts, block_m)
        ref = align_by_expert_ref(ids, num_experts, block_m, blocks.num_blocks)
        assert torch.equal(blocks.sorted_ids, ref[0])
        assert torch.equal(blocks.block_experts, ref[1])
        assert torch.equal(blocks.num_padded, ref[2])


def _bad(problem, **changes):
    args = {
        "hidden": problem.hidden,
        "w13": problem.w13,
        "w2": problem.w2,
        "topk_weights": problem.topk_weights,
        "topk_ids": problem.topk_ids,
    }
    args.update(changes)
    return args


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: {"hidden": p.hidden.long()}, "hidden must be a contiguous"),
        (lambda p: {"hidden": p.hidden.t()}, "hidden must be a contiguous"),
        (lambda p: {"w13": p.w13[:, :, :16].contiguous()}, "w13 must be"),
        (lambda p: {"w13": p.w13[:, :15].contiguous()}, "w13 must be"),
        (lambda p: {"w2": p.w2[:3]}, "w2 must be"),
        (lambda p: {"w2": p.w2.double()}, "w2 must be torch.float16"),
        (lambda p: {"w13": p.w13.transpose(1, 2).contiguous().transpose(1, 2)}, "contiguous"),
        (lambda p: {"topk_ids": p.topk_ids.float()}, "topk_ids must be int32/int64"),
        (lambda p: {"topk_ids": p.topk_ids[:2]}, "topk_ids must be"),
        (lambda p: {"topk_ids": p.topk_ids + 4}, r"topk_ids must lie in \[0, 3\]"),
        (lambda p: {"topk_weights": p.topk_weights[:, :1]}, "topk_weights must be"),
        (lambda p: {"topk_weights": p.topk_ids}, "topk_weights must be a float"),
        (lambda p: {"w13_scale": torch.ones(4, 32)}, "w13_scale is only for float8"),
    ],
)
def test_bad_arguments_raise_value_error(change, message):
    problem = make_moe_problem(5, 2, 4, 32, 16, torch.float16)
    with pytest.raises(ValueError, match=message):
        fused_moe(**_bad(problem, **change(problem)))


def test_fp8_weights_need_matching_scales():
    problem = make_moe_problem(5, 2, 4, 32, 16, torch.float16, fp8=True)
    with pytest.raises(ValueError, match="pass w13_scale"):
        fused_moe(**_bad(problem), w2_scale=problem.w2_scale)
    with pytest.raises(ValueError, match=r"w2_scale must be float32 of shape \(4, 32\)"):
        fused_moe(
            **_bad(problem),
            w13_scale=problem.w13_scale,
            w2_scale=problem.w2_scale[:, :8].contiguous(),
        )
