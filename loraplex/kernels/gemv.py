"""Matrix-vector products for decode-sized batches (one to a few rows), the shape of a
bandwidth-bound GEMV: each program streams its block of weight rows once. A library GEMM tiles
M = 1 into a 16- or 128-row tensor-core block and picks split-K kernels with separate
reduction launches.

Weights and x come in one dtype (bf16 / fp16 / fp32), or both in fp8 with float32 scales per
weight row and per x row: x is quantized once beforehand (by `fp8_linear.fp8_gemv`, or by the
kernel that produced it), since quantizing it again in every program would cost more
instructions than converting the program's weights.

Two variants, chosen per weight shape by the config's `tensor_cores`: `_gemv_kernel`
multiplies on the CUDA cores, keeping float32 partial products per element and reducing over
K once at the end; `_gemv_dot_kernel` swaps the operands (out^T = W @ x^T, the weight rows
filling the 16-row side of the tensor-core tile, the few x rows padded to 16 on the other) so
its weight loads go through the compiler's asynchronous copy pipeline, as a GEMM's do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from loraplex.kernels.launch_config import launch_config
from loraplex.kernels.pdl import pdl_options, wait_for_previous
from loraplex.kernels.silu import silu_times


@triton.jit
def _prefetch_weights(w_ptr, offs_n, N, K, stride_wn, PREFETCH_K: tl.constexpr, LINE: tl.constexpr):
    """Ask L2 for the first PREFETCH_K columns of this program's weight rows, one request per
    128-byte line of LINE elements. Issued before the PDL wait: while the previous kernel (a
    norm, attention, an activation: short and latency-bound) runs, the memory is idle."""
    rows = w_ptr + tl.minimum(offs_n, N - 1)[:, None].to(tl.int64) * stride_wn
    offs = tl.arange(0, 32) * LINE
    for c in range(0, tl.minimum(K, PREFETCH_K), 32 * LINE):
        ptrs = rows + tl.minimum(c + offs, K - 1)[None, :]
        tl.inline_asm_elementwise(
            "prefetch.global.L2 [$1];", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
        )


@triton.jit
def _weight_tile(w_rows, kk, K, EVEN_K: tl.constexpr):
    if EVEN_K:
        w = tl.load(w_rows + kk[None, :])
    else:
        w = tl.load(w_rows + kk[None, :], mask=kk[None, :] < K, other=0.0)
    return w


@triton.jit
def _x_tile(x_ptrs, mask, K, GATED: tl.constexpr):
    """x at `x_ptrs`; with GATED, x is silu(gate) * up read from a [M, 2K] gate_up row."""
    if GATED:
        gate = tl.load(x_ptrs, mask=mask, other=0.0)
        return silu_times(gate, tl.load(x_ptrs + K, mask=mask, other=0.0))
    return tl.load(x_ptrs, mask=mask, other=0.0)


@triton.jit
def _inverse_rms(
    x_cols, r_cols, r_out_cols, offs_k, m_mask, K, eps, write_rows, HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """1 / rms of each of the BLOCK_M rows of x (+ residual) over all K, as RMSNorm computes it;
    for the `write_rows`, also stores x + residual (the next residual stream)."""
    sum_sq = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        kk = k + offs_k
        mask = m_mask[None, :] & (kk[:, None] < K)
        h = tl.load(x_cols + kk[:, None], mask=mask, other=0.0)
        if HAS_RESIDUAL:
            h = h + tl.load(r_cols + kk[:, None], mask=mask, other=0.0)
            tl.store(r_out_cols + kk[:, None], h, mask=write_rows[None, :] & (kk[:, None] < K))
        h = h.to(tl.float32)
        sum_sq += tl.sum(h * h, axis=0)
    return tl.math.rsqrt(sum_sq / K + eps)


@triton.jit
def _x_cols(
    x_cols, r_cols, norm_w_ptr, inv_rms, kk, m_mask, K, EVEN_K: tl.constexpr,
    GATED: tl.constexpr, NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
):  # fmt: skip
    """x[:, kk]^T as a [BLOCK_K, BLOCK_M] tile: gated (silu(gate) * up), or normalized as
    RMSNorm rounds (x + residual, times 1 / rms cast to x's dtype, times the norm weight)."""
    mask = m_mask[None, :] if EVEN_K else m_mask[None, :] & (kk[:, None] < K)
    if NORM:
        h = tl.load(x_cols + kk[:, None], mask=mask, other=0.0)
        if HAS_RESIDUAL:
            h = h + tl.load(r_cols + kk[:, None], mask=mask, other=0.0)
        h = (h.to(tl.float32) * inv_rms[None, :]).to(h.dtype)
        norm_w = tl.load(norm_w_ptr + kk[:, None], mask=kk[:, None] < K, other=0.0)
        return norm_w * h
    return _x_tile(x_cols + kk[:, None], mask, K, GATED)


@triton.jit
def _dot_step(acc, w, xt, FP8: tl.constexpr, NATIVE_FP8: tl.constexpr, IEEE: tl.constexpr):
    """acc [BLOCK_N, BLOCK_M] += w [BLOCK_N, BLOCK_K] @ xt [BLOCK_K, BLOCK_M]."""
    if NATIVE_FP8:
        acc = tl.dot(w, xt, acc)
    elif FP8:
        # fp8 values are exact in fp16 and their products exact in the float32 sums, so this
        # equals an fp8 tensor-core product (and fp16 also runs in the CPU interpreter).
        acc = tl.dot(w.to(tl.float16), xt.to(tl.float16), acc)
    elif IEEE:
        acc = tl.dot(w, xt, acc, input_precision="ieee")
    else:
        acc = tl.dot(w, xt, acc)
    return acc


@triton.jit
def _scaled_output(acc, x_scale_ptr, w_scale_ptr, bias_ptr, offs_m, m_mask, offs_n, n_mask,
                   FP8: tl.constexpr, HAS_BIAS: tl.constexpr):  # fmt: skip
    """The float32 [BLOCK_M, BLOCK_N] products with fp8 scales and bias applied."""
    if FP8:
        w_scale = tl.load(w_scale_ptr + offs_n, mask=n_mask, other=0.0)
        x_scale = tl.load(x_scale_ptr + offs_m, mask=m_mask, other=0.0)
        acc = acc * x_scale[:, None] * w_scale[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _gemv_dot_kernel(
    x_ptr,
    x_scale_ptr,
    w_ptr,
    w_scale_ptr,
    bias_ptr,
    out_ptr,
    residual_ptr,
    norm_w_ptr,
    residual_out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_om,
    stride_rm,
    stride_rom,
    eps,
    FP8: tl.constexpr,
    NATIVE_FP8: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    IEEE: tl.constexpr,
    GATED: tl.constexpr,
    NORM: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREFETCH_K: tl.constexpr,
    LINE: tl.constexpr,
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
    if PREFETCH_K > 0:
        _prefetch_weights(w_ptr, offs_n, N, K, stride_wn, PREFETCH_K, LINE)
    wait_for_previous(PDL)
    r_cols = residual_ptr + offs_m[None, :] * stride_rm
    inv_rms = tl.zeros([BLOCK_M], dtype=tl.float32)
    if NORM:  # every program normalizes the few rows itself; program 0 keeps x + residual
        r_out_cols = residual_out_ptr + offs_m[None, :] * stride_rom
        write_rows = offs_m < tl.where(tl.program_id(0) == 0, M, 0)
        inv_rms = _inverse_rms(
            x_cols, r_cols, r_out_cols, offs_k, m_mask, K, eps, write_rows, HAS_RESIDUAL,
            BLOCK_M, BLOCK_K,
        )  # fmt: skip
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    xt = _x_cols(x_cols, r_cols, norm_w_ptr, inv_rms, offs_k, m_mask, K, EVEN_K, GATED, NORM,
                 HAS_RESIDUAL)  # fmt: skip
    acc = _dot_step(acc, w, xt, FP8, NATIVE_FP8, IEEE)
    for k in range(BLOCK_K, K, BLOCK_K):
        kk = k + offs_k
        w = _weight_tile(w_rows, kk, K, EVEN_K)
        xt = _x_cols(x_cols, r_cols, norm_w_ptr, inv_rms, kk, m_mask, K, EVEN_K, GATED, NORM,
                     HAS_RESIDUAL)  # fmt: skip
        acc = _dot_step(acc, w, xt, FP8, NATIVE_FP8, IEEE)
    n_mask = offs_n < N
    out = _scaled_output(
        tl.trans(acc), x_scale_ptr, w_scale_ptr, bias_ptr, offs_m, m_mask, offs_n, n_mask,
        FP8, HAS_BIAS,
    )  # fmt: skip
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _gemv_kernel(
    x_ptr,
    x_scale_ptr,
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
    FP8: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    GATED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PREFETCH_K: tl.constexpr,
    LINE: tl.constexpr,
    PDL: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    if PREFETCH_K > 0:
        _prefetch_weights(w_ptr, offs_n, N, K, stride_wn, PREFETCH_K, LINE)
    wait_for_previous(PDL)
    offs_m = tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn
    # Products accumulate elementwise and are summed over K once at the end: a reduction
    # across threads in every iteration would stall the loads behind it. Products of two fp8
    # values are exact in float32, as in the tensor-core path.
    partial = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        kk = k + offs_k
        k_mask = kk < K
        w = tl.load(w_rows + kk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        x = _x_tile(
            x_ptr + offs_m[:, None] * stride_xm + kk[None, :],
            m_mask[:, None] & k_mask[None, :],
            K,
            GATED,
        )
        partial += w.to(tl.float32)[None, :, :] * x.to(tl.float32)[:, None, :]
    out = _scaled_output(
        tl.sum(partial, axis=2), x_scale_ptr, w_scale_ptr, bias_ptr, offs_m, m_mask, offs_n,
        n_mask, FP8, HAS_BIAS,
    )  # fmt: skip
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@dataclass(frozen=True)
class RowNorm:
    """An RMSNorm a GEMV applies to its input rows first: x (+ residual) normalized and scaled
    by `weight`; `residual_out` [M, K] receives x + residual (the next residual stream)."""

    weight: torch.Tensor
    eps: float
    residual: torch.Tensor | None = None
    residual_out: torch.Tensor | None = None

    def check(self, x: torch.Tensor) -> None:
        if self.weight.shape != (x.shape[1],) or self.weight.dtype != x.dtype:
            raise ValueError(
                f"norm weight must be [{x.shape[1]}] {x.dtype}, got "
                f"{tuple(self.weight.shape)} {self.weight.dtype}"
            )
        if (self.residual is None) != (self.residual_out is None):
            raise ValueError("a residual needs a residual_out for the sum, and only then")
        for name in ("residual", "residual_out"):
            t = getattr(self, name)
            if t is not None and (t.shape != x.shape or t.dtype != x.dtype or t.stride(-1) != 1):
                raise ValueError(
                    f"{name} must be {tuple(x.shape)} {x.dtype} with unit column stride, got "
                    f"{tuple(t.shape)} {t.dtype}"
                )


def launch_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cfg: dict,
    *,
    x_scale: torch.Tensor | None = None,
    weight_scale: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    gated: bool = False,
    norm: RowNorm | None = None,
) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T (+ bias) -> [M, N] in `out_dtype` (default x's). With scales,
    x and weight are fp8 and the products are scaled by x_scale [M] and weight_scale [N].
    With `gated`, x is a gate_up output [M, 2K] and the product is silu(gate) * up @ W.T.
    With `norm` (tensor-core configs, unquantized), the product is RMSNorm(x) @ W.T."""
    m, k = x.shape
    n = weight.shape[0]
    if norm is not None:
        if gated or weight_scale is not None or not cfg.get("tensor_cores"):
            raise ValueError("a normalizing GEMV takes unquantized, ungated x and tensor cores")
        norm.check(x)
    if gated:
        if k != 2 * weight.shape[1]:
            raise ValueError(
                f"a gated GEMV takes [M, 2 x {weight.shape[1]}] gate_up rows, got {tuple(x.shape)}"
            )
        k = weight.shape[1]
    if m > cfg["max_m"]:
        raise ValueError(f"a GEMV takes at most {cfg['max_m']} rows, got {m}")
    if cfg.get("tensor_cores") and cfg["max_m"] > 16:
        raise ValueError(f"the tensor-core GEMV pads rows to 16, max_m {cfg['max_m']} is more")
    if weight.shape[1] != k or weight.stride(-1) != 1:
        raise ValueError(f"weight must be [N, {k}] with unit column stride, got {weight.shape}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    if not m:
        return out
    fp8 = weight_scale is not None
    spare = weight  # any pointer, for the arguments a launch does not read
    operands = (
        x, x_scale if fp8 else spare, weight, weight_scale if fp8 else spare,
        bias if bias is not None else spare, out,
    )  # fmt: skip
    sizes = (m, n, k, x.stride(0), weight.stride(0), out.stride(0))
    grid = (triton.cdiv(n, cfg["block_n"]),)
    pdl = pdl_options(x.device)
    # Prefetching only pays while a previous kernel runs, i.e. under PDL.
    prefetch = {"PREFETCH_K": cfg.get("prefetch_k", 0) if pdl["PDL"] else 0,
                "LINE": 128 // weight.element_size()}  # fmt: skip
    launch = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"], **prefetch, **pdl}
    if cfg.get("tensor_cores"):
        residual = norm.residual if norm is not None else None
        residual_out = norm.residual_out if norm is not None else None
        _gemv_dot_kernel[grid](
            *operands[:6],
            residual if residual is not None else spare,
            norm.weight if norm is not None else spare,
            residual_out if residual_out is not None else spare,
            *sizes,
            residual.stride(0) if residual is not None else 0,
            residual_out.stride(0) if residual_out is not None else 0,
            norm.eps if norm is not None else 0.0,
            FP8=fp8, NATIVE_FP8=fp8 and cfg.get("native_fp8", False),
            HAS_BIAS=bias is not None, EVEN_K=k % cfg["block_k"] == 0,
            IEEE=x.dtype == torch.float32, GATED=gated, NORM=norm is not None,
            HAS_RESIDUAL=residual is not None, BLOCK_M=16, BLOCK_N=cfg["block_n"],
            BLOCK_K=cfg["block_k"], **launch,
        )  # fmt: skip
    else:
        block_m = triton.next_power_of_2(m)
        # The [rows, N, K] partial-sum tile stays the same size whatever the row count.
        block_k = max(cfg["block_k"] // block_m, 16)
        _gemv_kernel[grid](
            *operands, *sizes, FP8=fp8, HAS_BIAS=bias is not None, GATED=gated, BLOCK_M=block_m,
            BLOCK_N=cfg["block_n"], BLOCK_K=block_k, **launch,
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


@functools.cache
def linear_row_limit(device: torch.device) -> int:
    """The most rows for which the engine's bf16 / fp16 linear layers use `gemv` on `device`
    (0: never, the library GEMM is as fast)."""
    cfg = launch_config("gemv", "default", device)
    return min(cfg.get("linear_max_m", 0), cfg["max_m"])


def gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    config=None,
    gated: bool = False,
    norm: RowNorm | None = None,
) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T (+ bias) for a few rows, weight and x in one dtype. With
    `gated`, x is the gate_up projection's output [M, 2K] and the GEMV multiplies
    silu(gate) * up, computed as it loads (the down projection without an activation launch).
    With `norm`, it multiplies RMSNorm(x (+ residual)), each program normalizing the rows
    itself (the projection after a norm without the norm's launch)."""
    if weight.dtype != x.dtype:
        raise ValueError(f"weight is {weight.dtype} but x is {x.dtype}")
    cfg = config or shape_config("gemv", *weight.shape, x.device)
    return launch_gemv(x, weight, bias, cfg, gated=gated, norm=norm)
