"""FP8 (float8_e4m3fn) linear layers: per-output-channel weight scales, per-token activations.

Weights are quantized once (at load, or read as such from an FP8 checkpoint); activations are
quantized per token on the fly, so no calibration is needed. On Hopper (and Ada) GPUs the
product runs in `torch._scaled_mm` with row-wise scales, or for decode-sized batches in the
Triton GEMV (`kernels.fp8_linear.fp8_gemv`); an input may arrive already quantized by the
kernel that produced it (`Fp8Activation`). Elsewhere the same quantized values are dequantized
and multiplied in float32, so CPU tests check the numbers the GPU computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max
# A row of zeros still needs a positive scale.
MIN_SCALE = 1e-12


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / scale as fp8, scale [..., 1] float32) with one scale per row: max |row| / 448."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    # Divided by a device tensor: CUDA turns division by a host scalar into multiplication by
    # its reciprocal, one ulp off the IEEE quotient the CPU and the Triton kernels compute.
    scale = (amax / amax.new_full((), FP8_MAX)).clamp(min=MIN_SCALE)
    q = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


class Fp8Activation(NamedTuple):
    """An activation `x` [T, K] with its per-token quantization `quantize_rows(x)` (q, scale),
    made by the kernel that produced x (a norm, the MLP's activation), so the fp8 linear layer
    it feeds skips quantizing it again. Everything else reads `x`."""

    x: torch.Tensor
    q: torch.Tensor
    scale: torch.Tensor


def with_fp8(x: torch.Tensor, q: torch.Tensor | None = None, scale=None) -> Fp8Activation:
    """`x` with its quantization: the given one (from a kernel), else computed here."""
    if q is None:
        q, scale = quantize_rows(x)
    return Fp8Activation(x, q, scale)


def _scaled_mm_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_linear(
    x: torch.Tensor | Fp8Activation,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """x [..., K] in the model dtype (or already quantized); weight [N, K] fp8; weight_scale
    [N] float32 -> [..., N]."""
    given = None  # (q, scale) handed over with x
    if isinstance(x, Fp8Activation):
        x, given = x.x, (x.q, x.scale)
    shape = x.shape
    rows = x.reshape(-1, shape[-1])
    if _scaled_mm_supported(x.device):
        from loraplex.kernels.fp8_linear import (
            fp8_gemv,
            quantize_per_token,
            small_m_limit,
        )

        if rows.shape[0] <= small_m_limit(x.device):  # decode-sized: a GEMV
            out = fp8_gemv(rows, weight, weight_scale, bias, quantized=given)
            return out.reshape(*shape[:-1], weight.shape[0])
        q, scale = given if given is not None else quantize_per_token(rows.contiguous())
        out = torch._scaled_mm(
            q,
            weight.t(),
            scale_a=scale,
            scale_b=weight_scale.view(1, -1),
            bias=bias,
            out_dtype=x.dtype,
        )
    else:
        q, scale = given if given is not None else quantize_rows(rows)
        w = weight.float() * weight_scale.view(-1, 1)
        out = (q.float() * scale) @ w.t()
        if bias is not None:
            out = out + bias.float()
        out = out.to(x.dtype)
    return out.reshape(*shape[:-1], weight.shape[0])


def expand_scale(loaded: torch.Tensor, rows: int) -> torch.Tensor:
    """A checkpoint's weight scale (per tensor, or per output channel as [N] or [N, 1]) as one
    float32 value per output row."""
    flat = loaded.float().reshape(-1)
    if flat.numel() == 1:
        return flat.expand(rows).clone()
    if flat.numel() != rows:
        raise ValueError(f"weight_scale has {flat.numel()} values for {rows} output rows")
    return flat


_fp8_checkpoint = False


@contextmanager
def fp8_checkpoint_weights(enabled: bool) -> Iterator[None]:
    """While building a model: linear layers take fp8 weights and scales from the checkpoint."""
    global _fp8_checkpoint
    previous, _fp8_checkpoint = _fp8_checkpoint, enabled
    try:
        yield
    finally:
        _fp8_checkpoint = previous


def building_fp8_checkpoint() -> bool:
    return _fp8_checkpoint


def is_fp8_checkpoint(hf_config: object) -> bool:
    quant = getattr(hf_config, "quantization_config", None) or {}
    if not isinstance(quant, dict):
        quant = quant.to_dict() if hasattr(quant, "to_dict") else vars(quant)
    return quant.get("quant_method") == "fp8"
