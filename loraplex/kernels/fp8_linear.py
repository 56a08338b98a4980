"""FP8 (e4m3) linear layers with per-token activation scales on the GPU.

`quantize_per_token` replaces the eight elementwise launches of the eager quantization with
one. `fp8_gemv` serves decode-sized batches (a few rows), where a library GEMM tiles M = 1 into
a 128-row block and reaches a fraction of the memory bandwidth: x is quantized once, then the
GEMV (`kernels.gemv`) streams the fp8 weights. Quantization rounds exactly as `quantize_rows`
does (IEEE division, round-to-nearest fp8), so the products equal `torch._scaled_mm`'s up to
the order of the float32 sums.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from loraplex.kernels.gemv import launch_gemv, shape_config
from loraplex.kernels.launch_config import launch_config
from loraplex.kernels.pdl import pdl_options, wait_for_previous

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max
MIN_SCALE = 1e-12  # a row of zeros still needs a positive scale


@triton.jit
def _quantize(x, scale, FP8_MAX_VALUE):
    q = tl.math.div_rn(x.to(tl.float32), scale[:, None])
    return tl.clamp(q, -FP8_MAX_VALUE, FP8_MAX_VALUE).to(tl.float8e4nv)


@triton.jit
def quantize_row(values, mask, FP8_MAX_VALUE: tl.constexpr, MIN: tl.constexpr):
    """(values / scale as fp8, scale) for one row a program holds whole, scale = max |row| /
    448 (at least MIN), rounded exactly as `quantize_rows` rounds: for kernels that produce an
    activation and hand an fp8 linear layer its quantization too."""
    v = values.to(tl.float32)
    amax = tl.max(tl.where(mask, tl.abs(v), 0.0), axis=0)
    scale = tl.maximum(tl.math.div_rn(amax, FP8_MAX_VALUE), MIN)
    q = tl.clamp(tl.math.div_rn(v, scale), -FP8_MAX_VALUE, FP8_MAX_VALUE)
    return q.to(tl.float8e4nv), scale


def fp8_outputs(rows: int, cols: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (q [rows, cols] fp8, scale [rows, 1] float32) for a kernel to fill."""
    return (
        torch.empty((rows, cols), dtype=FP8_DTYPE, device=device),
        torch.empty((rows, 1), dtype=torch.float32, device=device),
    )


def check_fp8_outputs(
    quantized: tuple[torch.Tensor, torch.Tensor], rows: int, cols: int, device: torch.device
) -> None:
    """ValueError unless (q, scale) can take the quantization of a [rows, cols] activation."""
    q, scale = quantized
    if q.shape != (rows, cols) or q.dtype != FP8_DTYPE or q.stride(-1) != 1:
        raise ValueError(f"q must be fp8 [{rows}, {cols}], got {q.dtype} {tuple(q.shape)}")
    if scale.shape != (rows, 1) or scale.dtype != torch.float32 or not scale.is_contiguous():
        raise ValueError(
            f"scale must be float32 [{rows}, 1], got {scale.dtype} {tuple(scale.shape)}"
        )
    if q.device != device or scale.device != device:
        raise ValueError(f"q and scale must be on {device}")


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
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    if BLOCK_K >= K:  # the whole row in registers: one read
        mask = offs_k < K
        x = tl.load(x_ptr + row * stride_xm + offs_k, mask=mask, other=0.0)
        q, scale = quantize_row(x, mask, FP8_MAX_VALUE, MIN)
        tl.store(q_ptr + row * stride_qm + offs_k, q, mask=mask)
        tl.store(scale_ptr + row, scale)
    else:  # (names differ from the branch above: Triton merges same-named values)
        rows = row + tl.arange(0, 1)
        row_scale = _row_scales(x_ptr, stride_xm, rows, rows >= 0, K, BLOCK_K, FP8_MAX_VALUE, MIN)
        for k in range(0, K, BLOCK_K):
            kk = k + offs_k
            in_row = kk[None, :] < K
            chunk = tl.load(x_ptr + rows[:, None] * stride_xm + kk[None, :], mask=in_row, other=0.0)
            chunk_q = _quantize(chunk, row_scale, FP8_MAX_VALUE)
            tl.store(q_ptr + rows[:, None] * stride_qm + kk[None, :], chunk_q, mask=in_row)
        tl.store(scale_ptr + rows, row_scale)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / scale as fp8 [M, K], scale [M, 1] float32), one scale per row: max |row| / 448."""
    if x.dim() != 2 or x.stride(-1) != 1:
        raise ValueError(f"x must be [rows, K] with unit column stride, got {tuple(x.shape)}")
    rows, k = x.shape
    q = torch.empty((rows, k), dtype=FP8_DTYPE, device=x.device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    if rows:
        # Rows up to 16K values are read once, kept in registers (32 per thread).
        block_k = min(triton.next_power_of_2(k), 16384)
        _quantize_per_token_kernel[(rows,)](
            x, q, scale, k, x.stride(0), q.stride(0),
            BLOCK_K=block_k, FP8_MAX_VALUE=FP8_MAX, MIN=MIN_SCALE,
            num_warps=max(4, min(16, block_k // 1024)), **pdl_options(x.device),
        )  # fmt: skip
    return q, scale


@functools.cache
def small_m_limit(device: torch.device) -> int:
    """The most rows `fp8_gemv` takes on `device`."""
    return launch_config("fp8_gemv", "default", device)["max_m"]


def fp8_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    config: dict | None = None,
    quantized: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """x [M, K] (bf16/fp16/fp32, M at most `small_m_limit`), weight [N, K] fp8, weight_scale
    [N] float32 -> [M, N] in x's dtype, x quantized per row first (unless `quantized` holds
    that already: q [M, K] fp8, scale [M, 1])."""
    if weight.dtype != FP8_DTYPE:
        raise ValueError(f"weight must be fp8, got {weight.dtype} {tuple(weight.shape)}")
    cfg = config or shape_config("fp8_gemv", *weight.shape, x.device)
    if x.shape[0] > cfg["max_m"]:  # before quantizing: the same error as the GEMV's
        raise ValueError(f"a GEMV takes at most {cfg['max_m']} rows, got {x.shape[0]}")
    q, scale = quantized if quantized is not None else quantize_per_token(x.contiguous())
    return launch_gemv(
        q, weight, bias, cfg, x_scale=scale, weight_scale=weight_scale, out_dtype=x.dtype
    )
