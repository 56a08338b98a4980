"""Gated activations of the MLP."""

from __future__ import annotations

import torch
from torch import nn

from loraplex.kernels import reference


class SiluAndMul(nn.Module):
    """silu(gate) * up, for the fused gate_up projection's output [T, 2 * I]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cuda" and x.dim() == 2:
            from loraplex.kernels.silu_and_mul import silu_and_mul

            return silu_and_mul(x)
        return reference.silu_and_mul_ref(x)
