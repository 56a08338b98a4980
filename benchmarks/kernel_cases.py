"""Inputs of the kernel benchmarks: paged caches with scattered pages and multi-LoRA batches at
Llama-3-8B sizes, each in several copies to rotate through (see `kernel_timing`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from kernel_timing import fill_random_, rotation_count

from loraplex.kernels import LoRAKernelMeta, lora_expand, lora_shrink, paged_attention
from loraplex.kernels.reference import FP8_DTYPE

LLAMA3_8B_HEADS = (32, 8, 128)  # query heads, KV heads, head dim
PAGE_SIZE = 16
DEVICE = "cuda"
# Llama-3-8B projections: name -> (in_features, output slices of the fused layer)
LLAMA3_8B_PROJECTIONS: dict[str, tuple[int, tuple[int, ...]]] = {
    "qkv": (4096, (4096, 1024, 1024)),
    "o": (4096, (4096,)),
    "gate_up": (4096, (14336, 14336)),
    "down": (14336, (4096,)),
}


@dataclass
class AttentionCase:
    inputs: list[tuple[tuple, dict]]  # paged_attention's arguments, one set per input copy
    min_bytes: int  # KV cache read once, queries read, outputs written, tables read
    flops: int  # 4 * heads * head_dim * (query, key) pairs

    def calls(self, run: Callable[..., object] = paged_attention) -> list[Callable[[], object]]:
        """One call of `run` (paged_attention's signature) per input copy."""
        return [lambda a=a, k=k: run(*a, **k) for a, k in self.inputs]


def attention_case(
    batch: int,
    context_len: int,
    query_len: int,
    kv_dtype: torch.dtype,
    *,
    heads: tuple[int, int, int] = LLAMA3_8B_HEADS,
) -> AttentionCase:
    """`batch` sequences of `context_len` cached tokens, the last `query_len` of them queried."""
    num_heads, num_kv_heads, head_dim = heads
    pages = -(-context_len // PAGE_SIZE)
    kv_bytes = (
        batch
        * context_len
        * num_kv_heads
        * head_dim
        * 2
        * torch.empty((), dtype=kv_dtype).element_size()
    )
    copies = rotation_count(kv_bytes)
    shape = (copies * batch * pages, PAGE_SIZE, num_kv_heads, head_dim)
    k_cache = fill_random_(torch.empty(shape, dtype=kv_dtype, device=DEVICE))
    v_cache = fill_random_(torch.empty(shape, dtype=kv_dtype, device=DEVICE))
    fp8 = kv_dtype == FP8_DTYPE
    scales = {name: torch.tensor(0.05, device=DEVICE) for name in ("k_scale", "v_scale")}
    context_lens = torch.full((batch,), context_len, dtype=torch.int32, device=DEVICE)
    cu_seqlens = torch.arange(batch + 1, dtype=torch.int32, device=DEVICE) * query_len
    inputs = []
    for copy in range(copies):
        order = torch.randperm(batch * pages, device=DEVICE) + copy * batch * pages
        tables = order.view(batch, pages).to(torch.int32)
        query = torch.randn(batch * query_len, num_heads, head_dim, device=DEVICE).bfloat16()
        out = torch.empty_like(query)
        kwargs = dict(
            max_query_len=query_len,
            max_context_len=context_len,
            scale=head_dim**-0.5,
            sliding_window=None,
            out=out,
            **(scales if fp8 else {}),
        )
        inputs.append(((query, k_cache, v_cache, tables, context_lens, cu_seqlens), kwargs))
    io_bytes = 2 * batch * query_len * num_heads * head_dim * 2 + batch * pages * 4
    pairs = batch * (query_len * (query_len + 1) // 2 + query_len * (context_len - query_len))
    return AttentionCase(inputs, kv_bytes + io_bytes, 4 * num_heads * head_dim * pairs)


@dataclass
class LoRACase:
    inputs: list[dict]  # x, lora_a, lora_b, meta, y, out per input copy
    offsets: tuple[int, ...]
    torch_calls: list[Callable[[], object]]  # gather-and-bmm, as PEFT-style code does it
    base_calls: list[Callable[[], object]]  # the base projection of the same layer
    weight_bytes: int  # A and B of the distinct adapters, read once
    min_bytes: int  # weights + x read + out read and written

    def kernel_calls(self, shrink_config=None, expand_config=None) -> list[Callable[[], object]]:
        """lora_shrink then lora_expand, one call per input copy."""

        def run(x, lora_a, lora_b, meta, y, out):
            lora_shrink(x, lora_a, meta, y, config=shrink_config)
            lora_expand(y, lora_b, meta, out, self.offsets, config=expand_config)

        return [lambda i=i: run(**i) for i in self.inputs]

    def shrink_calls(self, config=None) -> list[Callable[[], object]]:
        return [
            lambda i=i: lora_shrink(i["x"], i["lora_a"], i["meta"], i["y"], config=config)
            for i in self.inputs
        ]

    def expand_calls(self, config=None) -> list[Callable[[], object]]:
        return [
            lambda i=i: lora_expand(
                i["y"], i["lora_b"], i["meta"], i["out"], self.offsets, config=config
            )
            for i in self.inputs
        ]


def token_slots(num_tokens: int, adapters: int, prefill: bool) -> torch.Tensor:
    """Prefill: `adapters` prompts of equal length back to back; decode: a shuffled mix with
    every adapter used about equally often."""
    if prefill:
        slots = torch.arange(num_tokens) * adapters // num_tokens
    else:
        slots = torch.arange(num_tokens) % adapters
        slots = slots[torch.randperm(num_tokens)]
    return slots.to(torch.int32).to(DEVICE)


def lora_case(
    projection: str, rank: int, num_tokens: int, adapters: int, *, prefill: bool
) -> LoRACase:
    in_features, widths = LLAMA3_8B_PROJECTIONS[projection]
    out_features = sum(widths)
    offsets = tuple(sum(widths[:i]) for i in range(len(widths)))
    weight_bytes = adapters * rank * (in_features * len(widths) + out_features) * 2
    act_bytes = num_tokens * (in_features + 2 * out_features) * 2
    copies = rotation_count(weight_bytes + act_bytes)
    base_copies = rotation_count(out_features * in_features * 2)
    inputs, torch_calls, base_calls = [], [], []
    for _ in range(copies):
        x = torch.randn(num_tokens, in_features, device=DEVICE).bfloat16()
        lora_a = tuple(
            torch.randn(adapters, rank, in_features, device=DEVICE).bfloat16() * 0.02
            for _ in widths
        )
        lora_b = tuple(
            torch.randn(adapters, width, rank, device=DEVICE).bfloat16() * 0.02 for width in widths
        )
        token_lora = token_slots(num_tokens, adapters, prefill)
        meta = LoRAKernelMeta.build(token_lora, adapters, prefill=prefill)
        y = torch.empty(len(widths), num_tokens, rank, device=DEVICE)
        out = torch.randn(num_tokens, out_features, device=DEVICE).bfloat16()
        inputs.append(dict(x=x, lora_a=lora_a, lora_b=lora_b, meta=meta, y=y, out=out))

        def gather_bmm(x=x, a=lora_a, b=lora_b, token_lora=token_lora, out=out):
            index = token_lora.clamp(min=0).long()
            keep = (token_lora >= 0).to(x.dtype).unsqueeze(1)
            for a_i, b_i, offset in zip(a, b, offsets, strict=True):
                hidden = torch.bmm(a_i[index], x.unsqueeze(2))
                delta = torch.bmm(b_i[index], hidden).squeeze(2)
                out[:, offset : offset + b_i.shape[1]] += delta * keep

        torch_calls.append(gather_bmm)
    for _ in range(base_copies):
        x = torch.randn(num_tokens, in_features, device=DEVICE).bfloat16()
        weight = torch.randn(out_features, in_features, device=DEVICE).bfloat16()
        base_calls.append(lambda x=x, w=weight: torch.nn.functional.linear(x, w))
    return LoRACase(
        inputs, offsets, torch_calls, base_calls, weight_bytes, weight_bytes + act_bytes
    )
