"""Triton kernels of the engine: paged KV cache writes, paged attention (prefill and decode,
fp8 KV), batched multi-LoRA shrink / expand and the fused mixture-of-experts MLP. Pure-torch
references live in `reference`."""

from loraplex.kernels.fused_moe import fused_moe
from loraplex.kernels.lora_expand import lora_expand
from loraplex.kernels.lora_meta import LoRAKernelMeta
from loraplex.kernels.lora_shrink import lora_shrink
from loraplex.kernels.paged_attention import paged_attention
from loraplex.kernels.store_kv import store_kv

__all__ = [
    "LoRAKernelMeta",
    "fused_moe",
    "lora_expand",
    "lora_shrink",
    "paged_attention",
    "store_kv",
]
