"""Matrix-vector products for decode-sized batches (one to a few rows): each program streams
its block of weight rows once, keeping float32 partial products per element and reducing over
K once at the end, the shape of a bandwidth-bound GEMV. A library GEMM tiles M = 1 into a
16- or 128-row tensor-core block, and picks split-K kernels with separate reduction launches.

With QUANTIZE the rows of x are quantized to fp8 per row first (the FP8 path, see
`fp8_linear`); otherwise weights and x are multiplied as they are (bf16 / fp16 / fp32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from loraplex.kernels.launch_config import launch_config


@triton.jit
def _quantize(x, scale, FP8_MAX_VALUE):
    q = tl.math.div_rn(x.to(tl.float32), scale[:, None])
    return tl.clamp(q, -FP8_MAX_VALUE, FP8_MAX_VALUE).to(tl.float8e4nv)


@triton.jit
def _gemv_kernel(
    x_ptr,
    w_ptr,
    w_scale_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_om,
    QUANTIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_ROW: tl.constexpr,
    FP8_MAX_VALUE: tl.constexpr,
    MIN: tl.constexpr,
):
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    scale = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    if QUANTIZE:
        # Row scales from whole rows at once: one round trip to L2, not one per K step.
        offs_row = tl.arange(0, BLOCK_ROW)
        for m in tl.static_range(BLOCK_M):
            row_mask = (offs_row < K) & (tl.full([BLOCK_ROW], m, tl.int32) < M)
            row = tl.load(x_ptr + m * stride_xm + offs_row, mask=row_mask, other=0.0)
            amax = tl.max(tl.abs(row.to(tl.float32)), axis=0)
            scale = tl.where(offs_m == m, amax, scale)
        scale = tl.maximum(tl.math.div_rn(scale, FP8_MAX_VALUE), MIN)

    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn
    # Products accumulate elementwise and are summed over K once at the end: a reduction
    # across threads in every iteration would stall the loads behind it.
    partial = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        kk = k + offs_k
        k_mask = kk < K
        w = tl.load(w_rows + kk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        x = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + kk[None, :],
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        if QUANTIZE:
            # Products of two fp8 values are exact in float32, as in the tensor-core path.
            x = _quantize(x, scale, FP8_MAX_VALUE)
        partial += w.to(tl.float32)[None, :, :] * x.to(tl.float32)[:, None, :]
    out = tl.sum(partial, axis=2)
    if QUANTIZE:
        w_scale = tl.load(w_scale_ptr + offs_n, mask=n_mask, other=0.0)
        out = out * scale[:, None] * w_scale[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def launch_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    cfg: dict,
    fp8_max: float = 448.0,
    min_scale: float = 1e-12,
) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T (+ bias) -> [M, N] in x's dtype; with `weight_scale` the
    weight is fp8 and x is quantized per row (see fp8_linear.fp8_gemv)."""
    m, k = x.shape
    n = weight.shape[0]
    if m > cfg["max_m"]:
        raise ValueError(f"a GEMV takes at most {cfg['max_m']} rows, got {m}")
    if weight.shape[1] != k or weight.stride(-1) != 1:
        raise ValueError(f"weight must be [N, {k}] with unit column stride, got {weight.shape}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m:
        block_m = triton.next_power_of_2(m)
        # The [rows, N, K] partial-sum tile stays the same size whatever the row count.
        block_k = max(cfg["block_k"] // block_m, 16)
        quantize = weight_scale is not None
        spare = weight_scale if quantize else weight  # any pointer for unused arguments
        _gemv_kernel[(triton.cdiv(n, cfg["block_n"]),)](
            x, weight, spare, bias if bias is not None else spare, out,
            m, n, k, x.stride(0), weight.stride(0), out.stride(0),
            QUANTIZE=quantize, HAS_BIAS=bias is not None,
            BLOCK_M=block_m, BLOCK_N=cfg["block_n"], BLOCK_K=block_k,
            BLOCK_ROW=triton.next_power_of_2(k) if quantize else 16,
            FP8_MAX_VALUE=fp8_max, MIN=min_scale,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip
    return out


def gemv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, config=None
) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T (+ bias) for a few rows, weight and x in one dtype."""
    if weight.dtype != x.dtype:
        raise ValueError(f"weight is {weight.dtype} but x is {x.dtype}")
    cfg = config or launch_config("gemv", "default", x.device)
    return launch_gemv(x, weight, None, bias, cfg)
