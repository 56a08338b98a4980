"""Tokens sorted by expert into padded blocks, once per MoE layer, for the grouped GEMMs.

Each token picks K experts, so a forward of T tokens holds T * K (token, choice) assignments,
numbered `t * K + k`. The assignments are grouped by expert and every expert's group is padded
to a multiple of `block_m`, so each block of `block_m` rows belongs to exactly one expert and a
kernel program computes one block against one expert's weights (vLLM's `moe_align_block_size`).

One single-program launch does it all (count, prefix sum, stable scatter, block table): a
decode step would otherwise spend more time launching a dozen small tensor operations per layer
than reading the experts. Output shapes are known on the host in advance and nothing is read
back, so the launch can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# Assignments handled per step of the kernel's loops: the stable rank within a chunk compares
# every pair, CHUNK^2 work.
CHUNK = 128


@dataclass(frozen=True)
class ExpertBlocks:
    """Assignments grouped by expert in blocks of `block_m` rows.

    Rows `[b * block_m, (b + 1) * block_m)` of `sorted_ids` all go to expert `block_experts[b]`;
    padding rows hold `num_assignments`. Blocks at or past `num_padded` are unused (expert -1).
    """

    sorted_ids: torch.Tensor  # [num_blocks * block_m] int32: assignment ids t * K + k
    block_experts: torch.Tensor  # [num_blocks] int32: expert of each block, -1 when unused
    num_padded: torch.Tensor  # [1] int32: rows in use (a multiple of block_m)
    num_assignments: int  # T * K; ids >= this mark padding
    block_m: int

    @property
    def num_blocks(self) -> int:
        return self.block_experts.shape[0]


def max_padded_rows(num_assignments: int, num_experts: int, block_m: int) -> int:
    """An upper bound on the padded rows: every expert that gets an assignment pads at most
    `block_m - 1` rows, and at most min(E, T * K) experts get one."""
    return num_assignments + min(num_experts, num_assignments) * (block_m - 1)


@triton.jit
def _expert_keys(topk_ids_ptr, offs, num_assignments, num_experts):
    """Each assignment's expert, and whether it counts (in range, and a real assignment)."""
    inside = offs < num_assignments
    ids = tl.load(topk_ids_ptr + offs, mask=inside, other=-1).to(tl.int32)
    valid = inside & (ids >= 0) & (ids < num_experts)
    return tl.where(valid, ids, 0), valid


@triton.jit
def _align_kernel(
    topk_ids_ptr,
    sorted_ids_ptr,
    block_experts_ptr,
    num_padded_ptr,
    num_assignments,
    num_experts,
    num_blocks,
    BLOCK_M: tl.constexpr,
    CHUNK: tl.constexpr,
    BINS: tl.constexpr,
):
    bins = tl.arange(0, BINS)
    lanes = tl.arange(0, CHUNK)
    counts = tl.zeros([BINS], dtype=tl.int32)
    for start in range(0, num_assignments, CHUNK):
        keys, valid = _expert_keys(topk_ids_ptr, start + lanes, num_assignments, num_experts)
        counts += tl.histogram(keys, BINS, mask=valid)
    padded = (counts + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, 0)
    total = tl.sum(padded, 0)
    tl.store(num_padded_ptr, total)

    for start in range(0, num_blocks * BLOCK_M, CHUNK):
        rows = start + lanes
        tl.store(sorted_ids_ptr + rows, num_assignments, mask=rows < num_blocks * BLOCK_M)
    for start in range(0, num_blocks, CHUNK):
        blocks = start + lanes
        first_row = blocks * BLOCK_M
        # A block's expert is the number of experts whose padded group ends at or before it.
        ended = (ends[None, :] <= first_row[:, None]) & (bins[None, :] < num_experts)
        expert = tl.sum(ended.to(tl.int32), axis=1)
        expert = tl.where(first_row < total, expert, -1)
        tl.store(block_experts_ptr + blocks, expert, mask=blocks < num_blocks)
    # The padding fill above and the scatter below may touch the same rows from other threads.
    tl.debug_barrier()

    next_row = ends - padded  # per expert: where its next assignment goes
    earlier = lanes[None, :] < lanes[:, None]
    for start in range(0, num_assignments, CHUNK):
        offs = start + lanes
        keys, valid = _expert_keys(topk_ids_ptr, offs, num_assignments, num_experts)
        same = (keys[:, None] == keys[None, :]) & valid[None, :] & earlier
        rank = tl.sum(same.to(tl.int32), axis=1)
        base = tl.sum(tl.where(keys[:, None] == bins[None, :], next_row[None, :], 0), axis=1)
        tl.store(sorted_ids_ptr + base + rank, offs, mask=valid)
        next_row += tl.histogram(keys, BINS, mask=valid)


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> ExpertBlocks:
    """Group the assignments of `topk_ids` [T, K] (int32/int64, contiguous) by expert into
    blocks of `block_m` rows (see `align_by_expert_ref` for the exact layout).

    Within an expert, assignments keep their order. Ids outside [0, num_experts) belong to no
    block, so they are computed by no program.
    """
    if topk_ids.dim() != 2 or topk_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"topk_ids must be an int32/int64 [T, K] tensor, got {topk_ids.dtype} "
            f"{tuple(topk_ids.shape)}"
        )
    if num_experts < 1 or block_m < 1:
        raise ValueError(f"num_experts and block_m must be positive, got {num_experts}, {block_m}")
    num_assignments = topk_ids.numel()
    num_blocks = -(-max_padded_rows(num_assignments, num_experts, block_m) // block_m)
    device = topk_ids.device
    sorted_ids = torch.empty(num_blocks * block_m, dtype=torch.int32, device=device)
    block_experts = torch.empty(num_blocks, dtype=torch.int32, device=device)
    num_padded = torch.empty(1, dtype=torch.int32, device=device)
    _align_kernel[(1,)](
        topk_ids.contiguous(),
        sorted_ids,
        block_experts,
        num_padded,
        num_assignments,
        num_experts,
        num_blocks,
        BLOCK_M=block_m,
        CHUNK=CHUNK,
        BINS=triton.next_power_of_2(num_experts),
        num_warps=4,
    )
    return ExpertBlocks(sorted_ids, block_experts, num_padded, num_assignments, block_m)
