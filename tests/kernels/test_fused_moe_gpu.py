"""`fused_moe` compiled on a GPU (`pytest -m gpu`) at Mixtral and Qwen-MoE sizes, bf16 / fp16
and fp8 experts, against the float32-accumulating reference."""

from __future__ import annotations

import pytest
import torch

from loraplex.kernels import fused_moe
from loraplex.kernels.fused_moe import MoEConfig
from loraplex.kernels.fused_moe_align import align_by_expert
from loraplex.kernels.reference import align_by_expert_ref, fused_moe_ref
from tests.kernels.moe_cases import TOLERANCE, make_moe_problem, moe_error
from tests.kernels.paged_cases import relative_error

pytestmark = pytest.mark.gpu

CUDA = "cuda"
# (experts, top-k, hidden, intermediate): Mixtral-8x7B, and Qwen1.5-MoE-A2.7B's routed experts.
SHAPES = {"mixtral": (8, 2, 4096, 14336), "qwen2_moe": (60, 4, 2048, 1408)}
# Decode batches and prefill chunks.
TOKENS = [1, 7, 64, 300, 2048]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_tokens", TOKENS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_reference(dtype, num_tokens, shape):
    experts, top_k, hidden, inter = SHAPES[shape]
    problem = make_moe_problem(num_tokens, top_k, experts, hidden, inter, dtype, device=CUDA)
    assert moe_error(problem) < TOLERANCE[dtype]


@pytest.mark.parametrize("num_tokens", [1, 64, 300])
def test_float32_for_parity_runs(num_tokens):
    """The engine's float32 runs (parity with transformers on CUDA) use the kernel too."""
    problem = make_moe_problem(num_tokens, 2, 8, 1024, 2048, torch.float32, device=CUDA)
    assert moe_error(problem) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("num_tokens", TOKENS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_fp8_experts_match_reference(num_tokens, shape):
    experts, top_k, hidden, inter = SHAPES[shape]
    problem = make_moe_problem(
        num_tokens, top_k, experts, hidden, inter, torch.bfloat16, fp8=True, device=CUDA
    )
    assert moe_error(problem) < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize(
    ("num_tokens", "top_k", "num_experts", "block_m"),
    [(1, 2, 8, 16), (64, 2, 8, 16), (8192, 2, 8, 64), (4096, 4, 60, 64), (2048, 8, 256, 16)],
)
def test_alignment_kernel_matches_reference_exactly(num_tokens, top_k, num_experts, block_m):
    logits = torch.randn(num_tokens, num_experts, device=CUDA)
    ids = logits.topk(top_k, dim=-1).indices.to(torch.int32)
    blocks = align_by_expert(ids, num_experts, block_m)
    ref = align_by_expert_ref(ids, num_experts, block_m, blocks.num_blocks)
    assert torch.equal(blocks.sorted_ids, ref[0])
    assert torch.equal(blocks.block_experts, ref[1])
    assert torch.equal(blocks.num_padded, ref[2])


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_idle_experts_and_one_busy_expert(top_k):
    problem = make_moe_problem(
        513, top_k, 16, 1024, 512, torch.bfloat16, experts_used=[3, 7, 8, 12][:top_k], device=CUDA
    )
    assert moe_error(problem) < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize(
    "config",
    [
        MoEConfig(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=3),
        MoEConfig(block_m=64, block_n=128, block_k=64, num_warps=8, num_stages=3),
        MoEConfig(block_m=128, block_n=64, block_k=32, num_warps=4, num_stages=4),
    ],
)
def test_block_sizes(config):
    problem = make_moe_problem(400, 2, 8, 1000, 700, torch.bfloat16, device=CUDA)
    assert moe_error(problem, config) < TOLERANCE[torch.bfloat16]


def test_out_of_range_expert_ids_add_nothing_on_the_gpu():
    """On the GPU ids are not read back to be checked: a bad one drops its choice."""
    problem = make_moe_problem(64, 2, 8, 256, 128, torch.bfloat16, device=CUDA)
    ids = problem.topk_ids.clone()
    ids[::3, 1] = 8
    args = (problem.hidden, problem.w13, problem.w2, problem.topk_weights)
    out = fused_moe(*args, ids)
    dropped = problem.topk_weights.clone()
    dropped[::3, 1] = 0
    assert relative_error(out, fused_moe_ref(*args[:3], dropped, problem.topk_ids)) < 1e-2
