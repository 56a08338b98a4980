"""RMSNorm, computed in float32 and cast back exactly as transformers does, optionally with the
residual add fused in (the decoder passes the residual stream alongside the hidden state)."""

from __future__ import annotations

import torch
from torch import nn

from loraplex.kernels import reference


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(hidden_size), requires_grad=False)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """norm(x), or with `residual` (norm(x + residual), x + residual)."""
        if x.device.type == "cuda":
            from loraplex.kernels.rms_norm import rms_norm

            shape = x.shape
            flat = x.reshape(-1, shape[-1])
            res = residual.reshape(-1, shape[-1]) if residual is not None else None
            out = rms_norm(flat, self.weight, self.eps, res)
            if residual is None:
                return out.view(shape)
            return out[0].view(shape), out[1].view(shape)
        return reference.rms_norm_ref(x, self.weight, self.eps, residual)
