"""Attention over the paged KV cache: store this step's keys/values, then attend.

On CUDA the Triton kernels run; on CPU their pure-torch references (same semantics).
"""

from __future__ import annotations

import torch
from torch import nn

from loraplex.engine.context import get_forward_context
from loraplex.engine.layers.rotary import RotaryEmbedding
from loraplex.kernels import reference
from loraplex.kernels.store_kv import KVWrite


class Attention(nn.Module):
    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float,
        sliding_window: int | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        # Bound by the model runner once the cache is allocated.
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)
        self.k_scale: torch.Tensor | None = None
        self.v_scale: torch.Tensor | None = None

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        rotary: RotaryEmbedding | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q: [T, Hq, D], k, v: [T, Hkv, D] -> [T, Hq * D]; with `rotary`, q and k are first
        rotated by `positions` (on CUDA in the same launch that writes the cache)."""
        ctx = get_forward_context()
        store, attend = _ops(q.device)
        cache = (self.k_cache, self.v_cache, ctx.slot_mapping, self.k_scale, self.v_scale)
        if rotary is not None and q.is_cuda:
            q, k = rotary(positions, q, k, KVWrite(v, *cache))
        else:
            if rotary is not None:
                q, k = rotary(positions, q, k)
            store(k, v, *cache)
        out = attend(
            q,
            self.k_cache,
            self.v_cache,
            ctx.block_tables,
            ctx.context_lens,
            ctx.cu_seqlens_q,
            max_query_len=ctx.max_query_len,
            max_context_len=ctx.max_context_len,
            scale=self.scale,
            k_scale=self.k_scale,
            v_scale=self.v_scale,
            sliding_window=self.sliding_window,
        )
        return out.reshape(out.shape[0], -1)


def _ops(device: torch.device):
    """(store_kv, paged_attention) for the device: Triton kernels on CUDA, references else."""
    if device.type == "cuda":
        from loraplex import kernels

        return kernels.store_kv, kernels.paged_attention
    return reference.store_kv_ref, _paged_attention_ref


def _paged_attention_ref(*args, max_query_len: int, max_context_len: int, **kwargs):
    # The launch-size hints only matter to the kernels.
    return reference.paged_attention_ref(*args, **kwargs)
