"""silu(gate) * up over the fused gate_up projection's output [T, 2 * I], in one launch.

Rounds where the eager `F.silu(gate) * up` rounds: silu in float32 cast to the activation dtype,
then the product."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from loraplex.kernels.fp8_linear import FP8_MAX, MIN_SCALE, check_fp8_outputs, quantize_row
from loraplex.kernels.pdl import pdl_options, wait_for_previous
from loraplex.kernels.silu import silu_times

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(
    x_ptr, out_ptr, stride_x, stride_out, num_cols, q_ptr, scale_ptr, stride_q,
    QUANTIZE: tl.constexpr, FP8_MAX_VALUE: tl.constexpr, MIN: tl.constexpr,
    BLOCK: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    wait_for_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < num_cols
    gate = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * stride_x + num_cols + offs, mask=mask, other=0.0)
    out = silu_times(gate, up)
    tl.store(out_ptr + row * stride_out + offs, out, mask=mask)
    if QUANTIZE:  # one program holds the whole row (BLOCK >= num_cols)
        q, scale = quantize_row(out, mask, FP8_MAX_VALUE, MIN)
        tl.store(q_ptr + row * stride_q + offs, q, mask=mask)
        tl.store(scale_ptr + row, scale)


def silu_and_mul(
    x: torch.Tensor, quantized: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """`x [T, 2 * I]` (gate then up) -> `[T, I]`. With `quantized` (q [T, I] fp8, scale
    [T, 1] float32, see `fp8_linear.fp8_outputs`), also fills them with `quantize_rows(out)`."""
    if x.dim() != 2 or x.shape[1] % 2 or x.stride(-1) != 1:
        raise ValueError(f"x must be [tokens, 2 * intermediate], got {tuple(x.shape)}")
    num_rows, width = x.shape
    num_cols = width // 2
    out = torch.empty((num_rows, num_cols), dtype=x.dtype, device=x.device)
    block, num_warps = BLOCK, 4
    if quantized is not None:  # a row per program, for its maximum
        check_fp8_outputs(quantized, num_rows, num_cols, x.device)
        block = triton.next_power_of_2(num_cols)
        num_warps = min(max(block // 512, 4), 16)
    if num_rows:
        grid = (num_rows, triton.cdiv(num_cols, block))
        q, scale = quantized if quantized is not None else (out, out)
        _silu_and_mul_kernel[grid](
            x, out, x.stride(0), out.stride(0), num_cols, q, scale, q.stride(0),
            QUANTIZE=quantized is not None, FP8_MAX_VALUE=FP8_MAX, MIN=MIN_SCALE, BLOCK=block,
            num_warps=num_warps, enable_fp_fusion=False, **pdl_options(x.device),
        )  # fmt: skip
    return out
