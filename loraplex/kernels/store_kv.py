"""Writing new tokens' keys and values into the paged KV cache."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from loraplex.kernels.paged_kv import checked_scale
from loraplex.kernels.pdl import pdl_options, wait_for_previous
from loraplex.kernels.reference import FP8_DTYPE

CACHE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, FP8_DTYPE)
FP8_MAX = torch.finfo(FP8_DTYPE).max


@triton.jit
def _store_token(
    tok, key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr, k_scale_ptr,
    v_scale_ptr, stride_k_tok, stride_k_head, stride_v_tok, stride_v_head, stride_kc_block,
    stride_kc_slot, stride_kc_head, stride_vc_block, stride_vc_slot, stride_vc_head,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr, PAGE_SIZE: tl.constexpr, KV_FP8: tl.constexpr,
    FP8_MAX_VALUE: tl.constexpr,
):  # fmt: skip
    """Write token `tok`'s key and value heads into its cache slot (none for slot -1)."""
    slot = tl.load(slot_mapping_ptr + tok)
    if slot >= 0:
        offs_h = tl.arange(0, BLOCK_H)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (offs_h[:, None] < NUM_KV_HEADS) & (offs_d[None, :] < HEAD_DIM)
        block = slot // PAGE_SIZE
        offset = slot % PAGE_SIZE
        src = tok * stride_k_tok + offs_h[:, None] * stride_k_head + offs_d[None, :]
        key = tl.load(key_ptr + src, mask=mask)
        src = tok * stride_v_tok + offs_h[:, None] * stride_v_head + offs_d[None, :]
        value = tl.load(value_ptr + src, mask=mask)
        if KV_FP8:
            # IEEE division (Triton's `/` is approximate) to round exactly like the reference.
            key = tl.math.div_rn(key.to(tl.float32), tl.load(k_scale_ptr))
            key = tl.clamp(key, -FP8_MAX_VALUE, FP8_MAX_VALUE)
            value = tl.math.div_rn(value.to(tl.float32), tl.load(v_scale_ptr))
            value = tl.clamp(value, -FP8_MAX_VALUE, FP8_MAX_VALUE)
        dst = block * stride_kc_block + offset * stride_kc_slot
        dst = dst + offs_h[:, None] * stride_kc_head + offs_d[None, :]
        tl.store(k_cache_ptr + dst, key.to(k_cache_ptr.dtype.element_ty), mask=mask)
        dst = block * stride_vc_block + offset * stride_vc_slot
        dst = dst + offs_h[:, None] * stride_vc_head + offs_d[None, :]
        tl.store(v_cache_ptr + dst, value.to(v_cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_kv_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr, k_scale_ptr, v_scale_ptr,
    stride_k_tok, stride_k_head, stride_v_tok, stride_v_head, stride_kc_block, stride_kc_slot,
    stride_kc_head, stride_vc_block, stride_vc_slot, stride_vc_head,
    NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr, PAGE_SIZE: tl.constexpr, KV_FP8: tl.constexpr,
    FP8_MAX_VALUE: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    wait_for_previous(PDL)
    _store_token(
        tl.program_id(0).to(tl.int64), key_ptr, value_ptr, k_cache_ptr, v_cache_ptr,
        slot_mapping_ptr, k_scale_ptr, v_scale_ptr, stride_k_tok, stride_k_head, stride_v_tok,
        stride_v_head, stride_kc_block, stride_kc_slot, stride_kc_head, stride_vc_block,
        stride_vc_slot, stride_vc_head, NUM_KV_HEADS, HEAD_DIM, BLOCK_H, BLOCK_D, PAGE_SIZE,
        KV_FP8, FP8_MAX_VALUE,
    )  # fmt: skip


class KVWrite(NamedTuple):
    """Where a step's keys and values go: `value` [T, Hkv, D] (the keys are the caller's),
    the caches, each token's slot and the fp8 scales (see `store_kv`)."""

    value: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    slot_mapping: torch.Tensor
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None


def store_launch_args(key: torch.Tensor, kv: KVWrite) -> dict:
    """The arguments of `_store_token` after `tok`, by name, for arguments `check_store`
    accepted (kernels that call it take the same names)."""
    k_cache, v_cache = kv.k_cache, kv.v_cache
    names = ("stride_kc_block", "stride_kc_slot", "stride_kc_head", "stride_vc_block",
             "stride_vc_slot", "stride_vc_head")  # fmt: skip
    strides = dict(zip(names, (*k_cache.stride()[:3], *v_cache.stride()[:3]), strict=True))
    return {
        "key_ptr": key,
        "value_ptr": kv.value,
        "k_cache_ptr": k_cache,
        "v_cache_ptr": v_cache,
        "slot_mapping_ptr": kv.slot_mapping,
        "k_scale_ptr": checked_scale(kv.k_scale, "k_scale", key.device),
        "v_scale_ptr": checked_scale(kv.v_scale, "v_scale", key.device),
        "stride_k_tok": key.stride(0),
        "stride_k_head": key.stride(1),
        "stride_v_tok": kv.value.stride(0),
        "stride_v_head": kv.value.stride(1),
        **strides,
        "NUM_KV_HEADS": key.shape[1],
        "HEAD_DIM": key.shape[2],
        "BLOCK_H": triton.next_power_of_2(key.shape[1]),
        "BLOCK_D": triton.next_power_of_2(key.shape[2]),
        "PAGE_SIZE": k_cache.shape[1],
        "KV_FP8": k_cache.dtype == FP8_DTYPE,
        "FP8_MAX_VALUE": FP8_MAX,
    }


def store_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Write new tokens' keys and values into the paged cache (`reference.store_kv_ref`).

        for t with slot_mapping[t] >= 0:
            k_cache.view(-1, Hkv, D)[slot_mapping[t]] = key[t]   (likewise value into v_cache)
        with an fp8 cache: clamp(key[t] / k_scale, ±448) rounded to float8_e4m3fn.

    key, value: [T, Hkv, D] fp16 / bf16 / fp32 with a contiguous last dim (views of a fused
    qkv output are fine); k_cache, v_cache: [num_blocks, block_size, Hkv, D] in key's dtype or
    float8_e4m3fn; slot_mapping: [T] int64, slot = block_id * block_size + offset, -1 = skip;
    k_scale, v_scale: 0-d or 1-element float32 tensors (None means 1.0).
    Slots are not range-checked on the host (that would need a device sync).
    """
    check_store(key, KVWrite(value, k_cache, v_cache, slot_mapping))
    if key.shape[0] == 0:
        return
    args = store_launch_args(key, KVWrite(value, k_cache, v_cache, slot_mapping, k_scale, v_scale))
    _store_kv_kernel[(key.shape[0],)](
        **args,
        num_warps=4 if args["BLOCK_H"] * args["BLOCK_D"] >= 1024 else 1,
        **pdl_options(key.device),
    )


def check_store(key: torch.Tensor, kv: KVWrite) -> None:
    """ValueError unless the keys, values, caches and slots fit together (see `store_kv`)."""
    value, k_cache, v_cache, slot_mapping = kv.value, kv.k_cache, kv.v_cache, kv.slot_mapping
    if key.dim() != 3 or key.shape != value.shape or key.dtype != value.dtype:
        raise ValueError(
            f"key and value must be [T, Hkv, D] of one dtype, "
            f"got {tuple(key.shape)} {key.dtype} and {tuple(value.shape)} {value.dtype}"
        )
    if key.stride(-1) != 1 or value.stride(-1) != 1:
        raise ValueError("key and value need a contiguous last dim")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.shape[2:] != key.shape[1:]:
        raise ValueError(
            f"caches must be [num_blocks, block_size, {key.shape[1]}, {key.shape[2]}], "
            f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    if k_cache.dtype != v_cache.dtype or k_cache.dtype not in (key.dtype, FP8_DTYPE):
        raise ValueError(
            f"caches must be {key.dtype} or {FP8_DTYPE}, got {k_cache.dtype} / {v_cache.dtype}"
        )
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache need a contiguous last dim")
    if slot_mapping.dtype != torch.int64 or slot_mapping.shape != (key.shape[0],):
        raise ValueError(
            f"slot_mapping must be int64 of shape ({key.shape[0]},), "
            f"got {slot_mapping.dtype} {tuple(slot_mapping.shape)}"
        )
    for name, tensor in (
        ("value", value),
        ("k_cache", k_cache),
        ("v_cache", v_cache),
        ("slot_mapping", slot_mapping),
    ):
        if tensor.device != key.device:
            raise ValueError(f"{name} is on {tensor.device}, key on {key.device}")
