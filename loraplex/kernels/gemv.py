"""Matrix-vector products for decode-sized batches (one to a few rows): each program streams
its block of weight rows once, keeping float32 partial products per element and reducing over
K once at the end, the shape of a bandwidth-bound GEMV. A library GEMM tiles M = 1 into a
16- or 128-row tensor-core block, and picks split-K kernels with separate reduction launches.

With QUANTIZE the rows of x are quantized to fp8 per row first (the FP8 path, see
`fp8_linear`); otherwise weights and x are multiplied as they are (bf16 / fp16 / fp32).

Two variants, chosen per GPU by the config's `tensor_cores`: `_gemv_kernel` multiplies on the
CUDA cores, `_gemv_dot_kernel` swaps the operands (out^T = W @ x^T, the weight rows filling the
16-row side of the tensor-core tile, the few x rows padded to 16 on the other) so its weight
loads go through the compiler's asynchronous copy pipeline, as a GEMM's do.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from loraplex.kernels.launch_config import launch_config
from loraplex.kernels.pdl import pdl_options, wait_for_previous


@triton.jit
def _quantize(x, scale, FP8_MAX_VALUE):
    q = tl.math.div_rn(x.to(tl.float32), scale[:, None])
    return tl.clamp(q, -FP8_MAX_VALUE, FP8_MAX_VALUE).to(tl.float8e4nv)


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
def _padded_row_scales(
    x_ptr, stride_xm, M, BLOCK_M: tl.constexpr, ROWS: tl.constexpr, K_ROW: tl.constexpr,
    CHUNK: tl.constexpr, FP8_MAX_VALUE, MIN,
):  # fmt: skip
    """`_row_scales` of the first M (at most ROWS) rows, as a [BLOCK_M] vector padded with MIN.
    The loop over the row is unrolled (K_ROW is a compile-time constant) so that all its loads
    are in flight at once: this runs before the first weight tile is multiplied."""
    offs_r = tl.arange(0, ROWS)
    amax = tl.zeros([ROWS], dtype=tl.float32)
    for k in tl.static_range(0, K_ROW, CHUNK):
        kk = k + tl.arange(0, CHUNK)
        mask = (offs_r[:, None] < M) & (kk[None, :] < K_ROW)
        x = tl.load(x_ptr + offs_r[:, None] * stride_xm + kk[None, :], mask=mask, other=0.0)
        amax = tl.maximum(amax, tl.max(tl.abs(x.to(tl.float32)), axis=1))
    scale = tl.maximum(tl.math.div_rn(amax, FP8_MAX_VALUE), MIN)
    offs_m = tl.arange(0, BLOCK_M)
    return tl.max(tl.where(offs_m[:, None] == offs_r[None, :], scale[None, :], MIN), axis=1)


@triton.jit
def _weight_tile(w_rows, kk, K, EVEN_K: tl.constexpr):
    if EVEN_K:
        w = tl.load(w_rows + kk[None, :])
    else:
        w = tl.load(w_rows + kk[None, :], mask=kk[None, :] < K, other=0.0)
    return w


@triton.jit
def _dot_step(
    acc, w, x_cols, kk, m_mask, K, scale, QUANTIZE: tl.constexpr, EVEN_K: tl.constexpr,
    IEEE: tl.constexpr, FP8_MAX_VALUE: tl.constexpr,
):  # fmt: skip
    """acc [BLOCK_N, BLOCK_M] += w [BLOCK_N, BLOCK_K] @ x[:, kk]^T (x quantized with QUANTIZE)."""
    if EVEN_K:
        xt = tl.load(x_cols + kk[:, None], mask=m_mask[None, :], other=0.0)
    else:
        xt = tl.load(x_cols + kk[:, None], mask=m_mask[None, :] & (kk[:, None] < K), other=0.0)
    if QUANTIZE:
        # fp8 values are exact in fp16 and their products exact in the float32 sums, so
        # this equals an fp8 tensor-core product (fp16 also runs in the CPU interpreter).
        xq = _quantize(tl.trans(xt), scale, FP8_MAX_VALUE)
        acc = tl.dot(w.to(tl.float16), tl.trans(xq.to(tl.float16)), acc)
    elif IEEE:
        acc = tl.dot(w, xt, acc, input_precision="ieee")
    else:
        acc = tl.dot(w, xt, acc)
    return acc


@triton.jit
def _gemv_dot_kernel(
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
    EVEN_K: tl.constexpr,
    IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ROWS: tl.constexpr,
    K_ROW: tl.constexpr,
    FP8_MAX_VALUE: tl.constexpr,
    MIN: tl.constexpr,
    PDL: tl.constexpr,
):
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    # Rows past N read row N - 1 again (never stored): the weight loads stay unmasked.
    w_rows = w_ptr + tl.minimum(offs_n, N - 1)[:, None].to(tl.int64) * stride_wn
    offs_k = tl.arange(0, BLOCK_K)
    x_cols = x_ptr + offs_m[None, :] * stride_xm
    # No earlier kernel writes the weights: under PDL the first tile is read while the
    # previous kernel (whose output is x) finishes.
    w = _weight_tile(w_rows, offs_k, K, EVEN_K)
    wait_for_previous(PDL)
    scale = tl.full([BLOCK_M], 1.0, dtype=tl.float32)
    if QUANTIZE:
        scale = _padded_row_scales(
            x_ptr, stride_xm, M, BLOCK_M, ROWS, K_ROW, 1024, FP8_MAX_VALUE, MIN
        )
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    acc = _dot_step(acc, w, x_cols, offs_k, m_mask, K, scale, QUANTIZE, EVEN_K, IEEE, FP8_MAX_VALUE)
    for k in range(BLOCK_K, K, BLOCK_K):
        kk = k + offs_k
        w = _weight_tile(w_rows, kk, K, EVEN_K)
        acc = _dot_step(acc, w, x_cols, kk, m_mask, K, scale, QUANTIZE, EVEN_K, IEEE, FP8_MAX_VALUE)
    if QUANTIZE:
        w_scale = tl.load(w_scale_ptr + offs_n, mask=offs_n < N, other=0.0)
        acc = acc * w_scale[:, None] * scale[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[:, None]
    out_ptrs = out_ptr + offs_m[None, :] * stride_om + offs_n[:, None]
    tl.store(
        out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=m_mask[None, :] & (offs_n < N)[:, None]
    )


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
    PDL: tl.constexpr,
):
    wait_for_previous(PDL)
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
    if cfg.get("tensor_cores") and cfg["max_m"] > 16:
        raise ValueError(f"the tensor-core GEMV pads rows to 16, max_m {cfg['max_m']} is more")
    if weight.shape[1] != k or weight.stride(-1) != 1:
        raise ValueError(f"weight must be [N, {k}] with unit column stride, got {weight.shape}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    quantize = weight_scale is not None
    spare = weight_scale if quantize else weight  # any pointer for unused arguments
    if m and cfg.get("tensor_cores"):
        _gemv_dot_kernel[(triton.cdiv(n, cfg["block_n"]),)](
            x, weight, spare, bias if bias is not None else spare, out,
            m, n, k, x.stride(0), weight.stride(0), out.stride(0),
            QUANTIZE=quantize, HAS_BIAS=bias is not None, EVEN_K=k % cfg["block_k"] == 0,
            IEEE=x.dtype == torch.float32, BLOCK_M=16, BLOCK_N=cfg["block_n"],
            BLOCK_K=cfg["block_k"], ROWS=triton.next_power_of_2(m), K_ROW=k if quantize else 0,
            FP8_MAX_VALUE=fp8_max, MIN=min_scale,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            **pdl_options(x.device),
        )  # fmt: skip
    elif m:
        block_m = triton.next_power_of_2(m)
        # The [rows, N, K] partial-sum tile stays the same size whatever the row count.
        block_k = max(cfg["block_k"] // block_m, 16)
        _gemv_kernel[(triton.cdiv(n, cfg["block_n"]),)](
            x, weight, spare, bias if bias is not None else spare, out,
            m, n, k, x.stride(0), weight.stride(0), out.stride(0),
            QUANTIZE=quantize, HAS_BIAS=bias is not None,
            BLOCK_M=block_m, BLOCK_N=cfg["block_n"], BLOCK_K=block_k,
            BLOCK_ROW=triton.next_power_of_2(k) if quantize else 16,
            FP8_MAX_VALUE=fp8_max, MIN=min_scale,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            **pdl_options(x.device),
        )  # fmt: skip
    return out


@functools.cache
def shape_config(op: str, n: int, k: int, device: torch.device) -> dict:
    """`op`'s launch config for an [n, k] weight: its own entry ("NxK") where one was tuned
    on this GPU, else the default."""
    try:
        return launch_config(op, f"{n}x{k}", device)
    except KeyError:
        return launch_config(op, "default", device)


def linear_row_limit(device: torch.device) -> int:
    """The most rows for which the engine's bf16 / fp16 linear layers use `gemv` on `device`
    (0: never, the library GEMM is as fast)."""
    cfg = launch_config("gemv", "default", device)
    return min(cfg.get("linear_max_m", 0), cfg["max_m"])


def gemv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, config=None
) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T (+ bias) for a few rows, weight and x in one dtype."""
    if weight.dtype != x.dtype:
        raise ValueError(f"weight is {weight.dtype} but x is {x.dtype}")
    cfg = config or shape_config("gemv", *weight.shape, x.device)
    return launch_gemv(x, weight, None, bias, cfg)
