"""FP8 (e4m3) linear layers with per-token activation scales on the GPU.

`quantize_per_token` replaces the eight elementwise launches of the eager quantization with
one. `fp8_gemv` serves decode-sized batches (a few rows), where a library GEMM tiles M = 1 into
a 128-row block and reaches a fraction of the memory bandwidth: each program quantizes the
activations itself (x is a few KB and stays in L2, so recomputing the row maxima per program
costs nothing), then streams its columns' fp8 weights once with no separate quantization
launch, multiplying on the CUDA cores (tensor-core tiles would be mostly padding at M = 1).
Both round exactly as `quantize_rows` does (IEEE division, round-to-nearest fp8), so their
products equal `torch._scaled_mm`'s up to the order of the float32 sums.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from loraplex.kernels.launch_config import launch_config

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max
MIN_SCALE = 1e-12  # a row of zeros still needs a positive scale


@triton.jit
def _row_scales(x_ptr, stride_xm, offs_m, m_mask, K, BLOCK_K: tl.constexpr, FP8_MAX_VALUE, MIN):
    """Per-row max |x| / FP8_MAX (at least MIN) over all K columns, float32 [BLOCK_M]."""
    offs_k = tl.arange(0, BLOCK_K)
    amax = tl.zeros([offs_m.shape[0]], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        kk = k + offs_k
        mask = m_mask[:, None] & (kk[None, :] < K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :], mask=mask, other=0.0)
        amax = tl.maximum(amax, tl.max(tl.abs(x.to(tl.float32)), axis=1))
    return tl.maximum(tl.math.div_rn(amax, FP8_MAX_VALUE), MIN)


@triton.jit
def _quantize(x, scale, FP8_MAX_VALUE):
    q = tl.math.div_rn(x.to(tl.float32), scale[:, None])
    return tl.clamp(q, -FP8_MAX_VALUE, FP8_MAX_VALUE).to(tl.float8e4nv)


@triton.jit
def _quantize_per_token_kernel(
    x_ptr,
    q_ptr,
    scale_ptr,
    K,
    stride_xm,
    stride_qm,
    BLOCK_K: tl.constexpr,
    FP8_MAX_VALUE: tl.constexpr,
    MIN: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs_m = row + tl.arange(0, 1)
    m_mask = offs_m >= 0
    scale = _row_scales(x_ptr, stride_xm, offs_m, m_mask, K, BLOCK_K, FP8_MAX_VALUE, MIN)
    offs_k = tl.arange(0, BLOCK_K)
    for k in range(0, K, BLOCK_K):
        kk = k + offs_k
        mask = kk[None, :] < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :], mask=mask, other=0.0)
        q = _quantize(x, scale, FP8_MAX_VALUE)
        tl.store(q_ptr + offs_m[:, None] * stride_qm + kk[None, :], q, mask=mask)
    tl.store(scale_ptr + offs_m, scale)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / scale as fp8 [M, K], scale [M, 1] float32), one scale per row: max |row| / 448."""
    if x.dim() != 2 or x.stride(-1) != 1:
        raise ValueError(f"x must be [rows, K] with unit column stride, got {tuple(x.shape)}")
    rows, k = x.shape
    q = torch.empty((rows, k), dtype=FP8_DTYPE, device=x.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    if rows:
        _quantize_per_token_kernel[(rows,)](
            x, q, scale, k, x.stride(0), q.stride(0),
            BLOCK_K=min(triton.next_power_of_2(k), 4096), FP8_MAX_VALUE=FP8_MAX, MIN=MIN_SCALE,
            num_warps=8,
        )  # fmt: skip
    return q, scale


@triton.jit
def _fp8_gemv_kernel(
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
    # Row scales from whole rows at once: one round trip to L2, not one per K step.
    offs_row = tl.arange(0, BLOCK_ROW)
    scale = tl.zeros([BLOCK_M], dtype=tl.float32)
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
        xq = _quantize(x, scale, FP8_MAX_VALUE).to(tl.float32)
        # Products of two fp8 values are exact in float32, as in the tensor-core path.
        partial += w.to(tl.float32)[None, :, :] * xq[:, None, :]
    acc = tl.sum(partial, axis=2)
    w_scale = tl.load(w_scale_ptr + offs_n, mask=n_mask, other=0.0)
    out = acc * scale[:, None] * w_scale[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def small_m_limit(device: torch.device) -> int:
    """The most rows `fp8_gemv` takes on `device`."""
    return launch_config("fp8_gemv", "default", device)["max_m"]


def fp8_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """x [M, K] (bf16/fp16/fp32, M at most `small_m_limit`), weight [N, K] fp8, weight_scale
    [N] float32 -> [M, N] in x's dtype, x quantized per row on the fly."""
    cfg = config or launch_config("fp8_gemv", "default", x.device)
    m, k = x.shape
    n = weight.shape[0]
    if m > cfg["max_m"]:
        raise ValueError(f"fp8_gemv takes at most {cfg['max_m']} rows, got {m}")
    if weight.dtype != FP8_DTYPE or weight.shape[1] != k or weight.stride(-1) != 1:
        raise ValueError(f"weight must be fp8 [N, {k}], got {weight.dtype} {tuple(weight.shape)}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m:
        block_m = triton.next_power_of_2(m)
        # The [rows, N, K] product tile stays the same size whatever the row count.
        block_k = max(cfg["block_k"] // block_m, 16)
        _fp8_gemv_kernel[(triton.cdiv(n, cfg["block_n"]),)](
            x, weight, weight_scale, bias if bias is not None else weight_scale, out,
            m, n, k, x.stride(0), weight.stride(0), out.stride(0),
            HAS_BIAS=bias is not None,
            BLOCK_M=block_m, BLOCK_N=cfg["block_n"], BLOCK_K=block_k,
            BLOCK_ROW=triton.next_power_of_2(k),
            FP8_MAX_VALUE=FP8_MAX, MIN=MIN_SCALE,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )  # fmt: skip
    return out
