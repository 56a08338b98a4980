"""RMSNorm, computed in float32 and cast back exactly as transformers does, optionally with the
residual add fused in (the decoder passes the residual stream alongside the hidden state)."""

from __future__ import annotations

import torch
from torch import nn

from loraplex.engine.layers.fp8 import with_fp8
from loraplex.kernels import reference


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size), requires_grad=False)
        # Set when the layer fed by this norm has fp8 weights: the output then comes with its
        # per-token fp8 quantization (an Fp8Activation), computed in the same kernel on CUDA.
        self.fp8_output = False

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """norm(x), or with `residual` (norm(x + residual), x + residual). x is [T, H]."""
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
