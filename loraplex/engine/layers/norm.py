"""RMSNorm, computed in float32 and cast back exactly as transformers does, optionally with the
residual add fused in (the decoder passes the residual stream alongside the hidden state).

At decode sizes on a GPU a norm may hand the projection it feeds a `DeferredNorm` instead of
its output: the projection's GEMV normalizes its input rows itself, which saves the norm's
launch (a batch-1 decode step is ~320 short kernels, each costing a few microseconds)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from loraplex.engine.layers.fp8 import with_fp8
from loraplex.kernels import reference


class DeferredNorm(NamedTuple):
    """RMSNorm(x (+ residual)) not computed yet. `residual_out` (given with a residual) is
    already the norm's second output, x + residual, as soon as the consumer has run: a linear
    layer whose GEMV normalizes its input (`kernels.gemv.RowNorm`), or `materialize()`."""

    x: torch.Tensor
    residual: torch.Tensor | None
    residual_out: torch.Tensor | None
    norm: RMSNorm

    def materialize(self) -> torch.Tensor:
        from loraplex.kernels.rms_norm import rms_norm

        out = rms_norm(self.x, self.norm.weight, self.norm.eps, self.residual, None,
                       self.residual_out)  # fmt: skip
        return out if self.residual is None else out[0]


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size), requires_grad=False)
        # Set when the layer fed by this norm has fp8 weights: the output then comes with its
        # per-token fp8 quantization (an Fp8Activation), computed in the same kernel on CUDA.
        self.fp8_output = False
        # Set when the layer fed by this norm normalizes its input in its GEMV
        # (`LinearBase.fuses_norm`): at the sizes its GEMV takes, the output is deferred.
        self.defer_to_consumer = False

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """norm(x), or with `residual` (norm(x + residual), x + residual). x is [T, H]."""
        if self.defer_to_consumer:
            from loraplex.engine.layers.linear import uses_gemv

            if uses_gemv(x):
                if residual is None:
                    return DeferredNorm(x, None, None, self)
                residual_out = torch.empty_like(x)
                return DeferredNorm(x, residual, residual_out, self), residual_out
        if x.device.type == "cuda":
            from loraplex.kernels.fp8_linear import fp8_outputs
            from loraplex.kernels.rms_norm import rms_norm

            quantized = fp8_outputs(*x.shape, x.device) if self.fp8_output else None
            out = rms_norm(x, self.weight, self.eps, residual, quantized)
            normed = out if residual is None else out[0]
            if quantized is not None:
                normed = with_fp8(normed, *quantized)
            return normed if residual is None else (normed, out[1])
        out = reference.rms_norm_ref(x, self.weight, self.eps, residual)
        if not self.fp8_output:
            return out
        return with_fp8(out) if residual is None else (with_fp8(out[0]), out[1])
