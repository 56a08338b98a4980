"""RMSNorm with the residual add fused in: one read of each token's hidden state instead of the
eight elementwise kernels of the eager formula, which dominate decode steps at small batch.

Rounds where transformers rounds (the residual sum, the normalized value and the product with
the weight, each to the activation dtype), so bf16 outputs match the eager formula bit for bit
up to the order of the variance sum.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from loraplex.kernels.fp8_linear import (
    FP8_MAX,
    MIN_SCALE,
    check_fp8_outputs,
    quantize_row,
)
from loraplex.kernels.pdl import pdl_options, wait_for_previous


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    residual_ptr,
    weight_ptr,
    out_ptr,
    residual_out_ptr,
    stride_x,
    stride_residual,
    stride_out,
    stride_residual_out,
    num_cols,
    eps,
    q_ptr,
    scale_ptr,
    stride_q,
    HAS_RESIDUAL: tl.constexpr,
    QUANTIZE: tl.constexpr,
    FP8_MAX_VALUE: tl.constexpr,
    MIN: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < num_cols
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0)
    dtype = x.dtype
    if HAS_RESIDUAL:
        residual = tl.load(residual_ptr + row * stride_residual + offs, mask=mask, other=0.0)
        x = x + residual
        tl.store(residual_out_ptr + row * stride_residual_out + offs, x, mask=mask)
    h = x.to(tl.float32)
    variance = tl.sum(h * h, axis=0) / num_cols
    h = (h * tl.math.rsqrt(variance + eps)).to(dtype)
    weight = tl.load(weight_ptr + offs, mask=mask, other=0.0)
    out = weight * h
    tl.store(out_ptr + row * stride_out + offs, out, mask=mask)
    if QUANTIZE:
        q, scale = quantize_row(out, mask, FP8_MAX_VALUE, MIN)
        tl.store(q_ptr + row * stride_q + offs, q, mask=mask)
        tl.store(scale_ptr + row, scale)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    quantized: tuple[torch.Tensor, torch.Tensor] | None = None,
    residual_out: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of `x [T, H]`; with `residual`, of `x + residual`, returned with that sum (the
    next residual) as `(normed, x + residual)`, the sum written into `residual_out` when given.
    With `quantized` (q [T, H] fp8, scale [T, 1] float32, see `fp8_linear.fp8_outputs`), also
    fills them with `quantize_rows(normed)`."""
    if x.dim() != 2 or x.stride(-1) != 1:
        raise ValueError(f"x must be [tokens, hidden] with unit column stride, got {x.shape}")
    num_rows, num_cols = x.shape
    if weight.shape != (num_cols,):
        raise ValueError(f"weight has shape {tuple(weight.shape)}, expected ({num_cols},)")
    out = torch.empty_like(x)
    if residual is not None:
        if residual.shape != x.shape or residual.stride(-1) != 1:
            raise ValueError(f"residual {tuple(residual.shape)} does not match x {tuple(x.shape)}")
        if residual_out is None:
            residual_out = torch.empty_like(x)
        elif residual_out.shape != x.shape or residual_out.stride(-1) != 1:
            raise ValueError(
                f"residual_out {tuple(residual_out.shape)} does not match x {tuple(x.shape)}"
            )
    elif residual_out is not None:
        raise ValueError("residual_out receives x + residual: it needs a residual")
    else:
        residual_out = out
    if quantized is not None:
        check_fp8_outputs(quantized, num_rows, num_cols, x.device)
    if num_rows:
        block = triton.next_power_of_2(num_cols)
        _rms_norm_kernel[(num_rows,)](
            x,
            residual if residual is not None else x,
            weight,
            out,
            residual_out,
            x.stride(0),
            residual.stride(0) if residual is not None else 0,
            out.stride(0),
            residual_out.stride(0),
            num_cols,
            eps,
            *(quantized if quantized is not None else (out, out)),
            quantized[0].stride(0) if quantized is not None else 0,
            HAS_RESIDUAL=residual is not None,
            QUANTIZE=quantized is not None,
            FP8_MAX_VALUE=FP8_MAX,
            MIN=MIN_SCALE,
            BLOCK=block,
            num_warps=min(max(block // 512, 1), 16),
            enable_fp_fusion=False,
            **pdl_options(x.device),
        )
    return out if residual is None else (out, residual_out)
