"""Fused mixture-of-experts MLP: two grouped GEMM launches over tokens sorted by expert.

`align_by_expert` (one launch) groups the (token, choice) assignments into blocks that each
belong to one expert. The first GEMM launch multiplies every block by its expert's gate and up
rows together and applies SiLU-and-multiply in registers, writing one activation row per
assignment; the second multiplies the activations by the expert's down projection and scales
each row by its routing weight. The K rows of a token are then summed. Each program reads one
expert's weight tile for up to `block_m` tokens, so a decode step streams each selected
expert's weights about once.

FP8 experts (float8_e4m3fn with one float32 scale per output channel) are converted to the
activation dtype tile by tile and the scale is applied to the finished dot products, which is
exact because a per-output-channel scale factors out of the sum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from loraplex.kernels.fused_moe_align import ExpertBlocks, align_by_expert
from loraplex.kernels.launch_config import launch_config
from loraplex.kernels.reference import FP8_DTYPE

MOE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Below this many assignments per expert (on average) the small-block decode launch is used.
DECODE_ROWS_PER_EXPERT = 16


@dataclass(frozen=True)
class MoEConfig:
    block_m: int  # assignment rows per program (and the padding unit of each expert's group)
    block_n: int  # output columns per program
    block_k: int  # reduction step
    num_warps: int
    num_stages: int

    @classmethod
    def for_problem(cls, num_assignments: int, num_experts: int, device: torch.device) -> MoEConfig:
        decode = num_assignments < DECODE_ROWS_PER_EXPERT * num_experts
        return cls(**launch_config("fused_moe", "decode" if decode else "prefill", device))


@triton.jit
def _fused_moe_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    b_scale_ptr,
    topk_weights_ptr,
    sorted_ids_ptr,
    block_experts_ptr,
    num_padded_ptr,
    n_out,
    k_in,
    num_assignments,
    a_row_divisor,
    up_offset,
    stride_a_row,
    stride_b_expert,
    stride_b_row,
    stride_c_row,
    stride_scale_expert,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GATED: tl.constexpr,
    WEIGHTED: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """c[id, n] = (a[id // a_row_divisor] @ b[e, n]) for the rows of one expert block; GATED
    also computes the up row `n + up_offset` and stores silu(gate) * up; WEIGHTED multiplies
    by the assignment's routing weight."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    expert = tl.load(block_experts_ptr + pid_m).to(tl.int64)
    ids = tl.load(sorted_ids_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    row_mask = ids < num_assignments
    a_rows = (ids // a_row_divisor).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < n_out
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None] * stride_a_row + offs_k[None, :]
    b_ptrs = b_ptr + expert * stride_b_expert + offs_n[None, :] * stride_b_row + offs_k[:, None]
    up_shift = up_offset * stride_b_row
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, k_in, BLOCK_K):
        if EVEN_K:
            a_mask = row_mask[:, None]
            b_mask = n_mask[None, :]
        else:
            k_mask = (k + offs_k) < k_in
            a_mask = row_mask[:, None] & k_mask[None, :]
            b_mask = n_mask[None, :] & k_mask[:, None]
        a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        b = tl.load(b_ptrs, mask=b_mask, other=0.0).to(a_ptr.dtype.element_ty)
        acc += tl.dot(a, b)
        if GATED:
            b_up = tl.load(b_ptrs + up_shift, mask=b_mask, other=0.0)
            acc_up += tl.dot(a, b_up.to(a_ptr.dtype.element_ty))
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if HAS_SCALE:
        scale_ptrs = b_scale_ptr + expert * stride_scale_expert + offs_n
        acc *= tl.load(scale_ptrs, mask=n_mask, other=0.0)[None, :]
        if GATED:
            acc_up *= tl.load(scale_ptrs + up_offset, mask=n_mask, other=0.0)[None, :]
    if GATED:
        acc = acc * tl.sigmoid(acc) * acc_up
    if WEIGHTED:
        acc *= tl.load(topk_weights_ptr + ids, mask=row_mask, other=0.0)[:, None]
    c_ptrs = c_ptr + ids.to(tl.int64)[:, None] * stride_c_row + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_mask[:, None] & n_mask[None, :])


def fused_moe(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    w13_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
    config: MoEConfig | None = None,
) -> torch.Tensor:
    """Mixture-of-experts MLP of every token over its routed experts (see `fused_moe_ref`):

        gate, up = (w13[e] @ hidden[t]).split(I);  act = silu(gate) * up    (e = topk_ids[t, k])
        out[t] = sum_k topk_weights[t, k] * (w2[e] @ act)

    hidden: [T, H] fp16/bf16/fp32, contiguous; w13: [E, 2 * I, H] (gate rows, then up rows),
    w2: [E, H, I], both contiguous, in hidden's dtype or float8_e4m3fn with w13_scale
    [E, 2 * I] and w2_scale [E, H] float32 contiguous (w = q * scale per output channel);
    topk_weights: [T, K] float (used in float32); topk_ids: [T, K] int32/int64. An expert id
    outside [0, E) raises ValueError when topk_ids is on the CPU; on a GPU, where checking would
    read it back, its choice adds nothing.
    Products accumulate in float32; the activation and each choice's result are rounded to
    hidden's dtype, the K results summed in float32 and rounded once. Returns [T, H] in
    hidden's dtype.
    """
    _check_inputs(hidden, w13, w2, topk_weights, topk_ids, w13_scale, w2_scale)
    num_tokens, hidden_size = hidden.shape
    num_experts, double_inter, _ = w13.shape
    inter = double_inter // 2
    top_k = topk_ids.shape[1]
    num_assignments = num_tokens * top_k
    if num_assignments == 0:
        return hidden.new_zeros(num_tokens, hidden_size)
    if config is None:
        config = MoEConfig.for_problem(num_assignments, num_experts, hidden.device)
    blocks = align_by_expert(topk_ids, num_experts, config.block_m)
    act = torch.empty(num_assignments, inter, dtype=hidden.dtype, device=hidden.device)
    _launch(hidden, w13, w13_scale, act, None, blocks, config, row_divisor=top_k, gated=True)
    # Zeroed: rows of out-of-range expert ids are written by no program and must add nothing.
    parts = torch.zeros(num_assignments, hidden_size, dtype=hidden.dtype, device=hidden.device)
    weights = topk_weights.reshape(-1).to(torch.float32).contiguous()
    _launch(act, w2, w2_scale, parts, weights, blocks, config, row_divisor=1, gated=False)
    if top_k == 1:
        return parts
    return (
        parts.view(num_tokens, top_k, hidden_size).sum(dim=1, dtype=torch.float32).to(hidden.dtype)
    )


def _launch(
    a: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor | None,
    c: torch.Tensor,
    topk_weights: torch.Tensor | None,
    blocks: ExpertBlocks,
    config: MoEConfig,
    *,
    row_divisor: int,
    gated: bool,
) -> None:
    n_out = c.shape[1]
    k_in = a.shape[1]
    block_k = min(config.block_k, max(16, triton.next_power_of_2(k_in)))
    if a.element_size() == 4:  # float32 tiles: twice the shared memory per pipeline stage
        block_k = min(block_k, 64)
    grid = (blocks.num_blocks, triton.cdiv(n_out, config.block_n))
    _fused_moe_kernel[grid](
        a,
        b,
        c,
        b_scale if b_scale is not None else c,
        topk_weights if topk_weights is not None else c,
        blocks.sorted_ids,
        blocks.block_experts,
        blocks.num_padded,
        n_out,
        k_in,
        blocks.num_assignments,
        row_divisor,
        n_out if gated else 0,
        a.stride(0),
        b.stride(0),
        b.stride(1),
        c.stride(0),
        b_scale.stride(0) if b_scale is not None else 0,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=block_k,
        GATED=gated,
        WEIGHTED=topk_weights is not None,
        HAS_SCALE=b_scale is not None,
        EVEN_K=k_in % block_k == 0,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )


def _check_inputs(
    hidden: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    w13_scale: torch.Tensor | None,
    w2_scale: torch.Tensor | None,
) -> None:
    if hidden.dim() != 2 or hidden.dtype not in MOE_DTYPES or not hidden.is_contiguous():
        raise ValueError(
            f"hidden must be a contiguous [T, H] fp16/bf16/fp32 tensor, "
            f"got {tuple(hidden.shape)} {hidden.dtype}"
        )
    num_tokens, hidden_size = hidden.shape
    if w13.dim() != 3 or w13.shape[2] != hidden_size or w13.shape[1] % 2:
        raise ValueError(f"w13 must be [E, 2 * I, {hidden_size}], got {tuple(w13.shape)}")
    num_experts, inter = w13.shape[0], w13.shape[1] // 2
    if tuple(w2.shape) != (num_experts, hidden_size, inter):
        raise ValueError(
            f"w2 must be [{num_experts}, {hidden_size}, {inter}] to match w13, "
            f"got {tuple(w2.shape)}"
        )
    for name, weight, scale in (("w13", w13, w13_scale), ("w2", w2, w2_scale)):
        _check_weight(name, weight, scale, hidden)
    if topk_ids.dim() != 2 or topk_ids.shape[0] != num_tokens:
        raise ValueError(f"topk_ids must be [{num_tokens}, K], got {tuple(topk_ids.shape)}")
    if topk_ids.dtype not in (torch.int32, torch.int64) or topk_ids.shape[1] < 1:
        raise ValueError(f"topk_ids must be int32/int64 with K >= 1, got {topk_ids.dtype}")
    if tuple(topk_weights.shape) != tuple(topk_ids.shape) or not topk_weights.is_floating_point():
        raise ValueError(
            f"topk_weights must be a float tensor of shape {tuple(topk_ids.shape)}, "
            f"got {tuple(topk_weights.shape)} {topk_weights.dtype}"
        )
    for name, tensor in (("topk_ids", topk_ids), ("topk_weights", topk_weights)):
        if tensor.device != hidden.device:
            raise ValueError(f"{name} is on {tensor.device}, hidden on {hidden.device}")
    if topk_ids.device.type == "cpu" and topk_ids.numel():
        low, high = int(topk_ids.min()), int(topk_ids.max())
        if low < 0 or high >= num_experts:
            raise ValueError(f"topk_ids must lie in [0, {num_experts - 1}], got [{low}, {high}]")


def _check_weight(
    name: str, weight: torch.Tensor, scale: torch.Tensor | None, hidden: torch.Tensor
) -> None:
    if weight.device != hidden.device:
        raise ValueError(f"{name} is on {weight.device}, hidden on {hidden.device}")
    if not weight.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    if weight.dtype == FP8_DTYPE:
        expected = tuple(weight.shape[:2])
        if scale is None:
            raise ValueError(f"{name} is float8_e4m3fn: pass {name}_scale of shape {expected}")
        if tuple(scale.shape) != expected or scale.dtype != torch.float32:
            raise ValueError(
                f"{name}_scale must be float32 of shape {expected}, "
                f"got {tuple(scale.shape)} {scale.dtype}"
            )
        if scale.device != hidden.device or not scale.is_contiguous():
            raise ValueError(f"{name}_scale must be contiguous on {hidden.device}")
    elif weight.dtype != hidden.dtype:
        raise ValueError(
            f"{name} must be {hidden.dtype} (as hidden) or float8_e4m3fn, got {weight.dtype}"
        )
    elif scale is not None:
        raise ValueError(
            f"{name}_scale is only for float8_e4m3fn weights, {name} is {weight.dtype}"
        )
