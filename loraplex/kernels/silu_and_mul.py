"""silu(gate) * up over the fused gate_up projection's output [T, 2 * I], in one launch.

Rounds where the eager `F.silu(gate) * up` rounds: silu in float32 cast to the activation dtype,
then the product."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from loraplex.kernels.pdl import pdl_options, wait_for_previous

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(
    x_ptr, out_ptr, stride_x, stride_out, num_cols, BLOCK: tl.constexpr, PDL: tl.constexpr
):
    wait_for_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < num_cols
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + num_cols + offs, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = tl.math.div_rn(g, 1.0 + tl.exp(-g)).to(gate.dtype)
    tl.store(out_ptr + row * stride_out + offs, act * up, mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """`x [T, 2 * I]` (gate then up) -> `[T, I]`."""
    if x.dim() != 2 or x.shape[1] % 2 or x.stride(-1) != 1:
        raise ValueError(f"x must be [tokens, 2 * intermediate], got {tuple(x.shape)}")
    num_rows, width = x.shape
    num_cols = width // 2
    out = torch.empty((num_rows, num_cols), dtype=x.dtype, device=x.device)
    if num_rows:
        grid = (num_rows, triton.cdiv(num_cols, BLOCK))
        _silu_and_mul_kernel[grid](
            x, out, x.stride(0), out.stride(0), num_cols, BLOCK=BLOCK, enable_fp_fusion=False,
            **pdl_options(x.device),
        )  # fmt: skip
    return out
