"""Random fused-MoE problems and their check against `fused_moe_ref`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraplex.kernels.fused_moe import MoEConfig, fused_moe
from loraplex.kernels.reference import fused_moe_ref, quantize_fp8_per_channel_ref
from tests.kernels.paged_cases import relative_error

# Relative error bound of the kernel against the reference, per activation dtype.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@dataclass
class MoEProblem:
    hidden: torch.Tensor  # [T, H]
    w13: torch.Tensor  # [E, 2I, H], model dtype or fp8
    w2: torch.Tensor  # [E, H, I]
    topk_weights: torch.Tensor  # [T, K] float32
    topk_ids: torch.Tensor  # [T, K] int32
    w13_scale: torch.Tensor | None = None
    w2_scale: torch.Tensor | None = None

    def scales(self) -> dict[str, torch.Tensor | None]:
        return {"w13_scale": self.w13_scale, "w2_scale": self.w2_scale}


def make_moe_problem(
    num_tokens: int,
    top_k: int,
    num_experts: int,
    hidden_size: int,
    inter: int,
    dtype: torch.dtype,
    *,
    experts_used: list[int] | None = None,
    fp8: bool = False,
    device: str = "cpu",
    seed: int = 0,
) -> MoEProblem:
    """Weights scaled by fan-in; routing as a softmax router does it (top-k of a softmax,
    renormalised), restricted to `experts_used` when given (the others get no tokens)."""
    # Drawn on the target device: Mixtral-sized experts are gigabytes, slow to draw on a CPU.
    generator = torch.Generator(device=device).manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=generator, device=device)
    hidden = randn(num_tokens, hidden_size)
    w13 = randn(num_experts, 2 * inter, hidden_size) / hidden_size**0.5
    w2 = randn(num_experts, hidden_size, inter) / inter**0.5
    logits = randn(num_tokens, num_experts)
    if experts_used is not None:
        allowed = torch.zeros(num_experts, dtype=torch.bool, device=device)
        allowed[experts_used] = True
        logits = logits.masked_fill(~allowed, float("-inf"))
    weights, ids = logits.softmax(dim=-1).topk(top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    problem = MoEProblem(
        hidden=hidden.to(dtype),
        w13=w13.to(dtype),
        w2=w2.to(dtype),
        topk_weights=weights,
        topk_ids=ids.to(torch.int32),
    )
    if fp8:
        problem.w13, problem.w13_scale = quantize_fp8_per_channel_ref(w13)
        problem.w2, problem.w2_scale = quantize_fp8_per_channel_ref(w2)
    for name, value in vars(problem).items():
        if value is not None:
            setattr(problem, name, value.to(device))
    return problem


def moe_error(problem: MoEProblem, config: MoEConfig | None = None) -> float:
    """Relative error of the kernel's output against the float32-accumulating reference."""
    args = (problem.hidden, problem.w13, problem.w2, problem.topk_weights, problem.topk_ids)
    out = fused_moe(*args, **problem.scales(), config=config)
    assert out.shape == problem.hidden.shape and out.dtype == problem.hidden.dtype
    ref = fused_moe_ref(*args, **problem.scales())
    return relative_error(out, ref)
