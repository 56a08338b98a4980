"""Gated activations of the MLP."""

from __future__ import annotations

import torch
from torch import nn

from loraplex.engine.layers.fp8 import Fp8Activation, with_fp8
from loraplex.kernels import reference


class SiluAndMul(nn.Module):
    """silu(gate) * up, for the fused gate_up projection's output [T, 2 * I]."""

    def __init__(self) -> None:
        super().__init__()
        # Set when the down projection has fp8 weights (see RMSNorm.fp8_output).
        self.fp8_output = False

    def forward(self, x: torch.Tensor) -> torch.Tensor | Fp8Activation:
        if x.device.type == "cuda" and x.dim() == 2:
            from loraplex.kernels.fp8_linear import fp8_outputs
            from loraplex.kernels.silu_and_mul import silu_and_mul

            quantized = (
                fp8_outputs(x.shape[0], x.shape[1] // 2, x.device) if self.fp8_output else None
            )
            out = silu_and_mul(x, quantized)
            return with_fp8(out, *quantized) if quantized is not None else out
        out = reference.silu_and_mul_ref(x)
        return with_fp8(out) if self.fp8_output else out
