"""silu(gate) * up as a Triton device function, shared by the activation kernel and the gated
GEMV (the down projection computing its input as it loads it)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def silu_times(gate, up):
    """silu(gate) * up, rounded where the eager `F.silu(gate) * up` rounds: silu in float32
    cast to the activation dtype, then the product."""
    g = gate.to(tl.float32)
    return tl.math.div_rn(g, 1.0 + tl.exp(-g)).to(gate.dtype) * up
