"""Tensor-parallel state and the collectives the layers use.

Layers read `tp_rank()` / `tp_size()` once, when they are built inside `tensor_parallel(...)`,
and keep their shard's rank and size; so a process may hold a single-rank engine beside the
driver rank of a sharded one. With one rank no collective is ever called.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

logger = logging.getLogger(__name__)

_tp_rank = 0
_tp_size = 1

# Opt in to all-reduces through symmetric memory (peer-to-peer loads over NVLink) instead of
# NCCL: `LORAPLEX_TP_ALL_REDUCE=symm_mem`. A decode step all-reduces two small tensors per
# layer, where NCCL's fixed latency dominates.
FAST_ALL_REDUCE_ENV = "LORAPLEX_TP_ALL_REDUCE"
_fast_all_reduce: _SymmetricMemoryAllReduce | None = None


@contextmanager
def tensor_parallel(rank: int, size: int) -> Iterator[None]:
    """Layers built inside take shard `rank` of `size`."""
    global _tp_rank, _tp_size
    previous = (_tp_rank, _tp_size)
    _tp_rank, _tp_size = rank, size
    try:
        yield
    finally:
        _tp_rank, _tp_size = previous


def tp_rank() -> int:
    return _tp_rank


def tp_size() -> int:
    return _tp_size


def all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum `x` in place over the ranks of the process group. Sharded layers call it; without a
    process group it is the identity."""
    if torch.distributed.is_initialized():
        if _fast_all_reduce is not None and _fast_all_reduce.fits(x):
            _fast_all_reduce.all_reduce_(x)
        else:
            torch.distributed.all_reduce(x)
    return x


class _SymmetricMemoryAllReduce:
    """All-reduces of up to MAX_BYTES through buffers every rank maps (PyTorch's symmetric
    memory). Up to ONE_SHOT_BYTES (a decode step's hidden states), one kernel copies x in and
    sums every rank's buffer into x: one round of peer reads, the least latency. Larger ones
    copy in, reduce in place in two rounds (reduce-scatter, all-gather), copy out."""

    MAX_BYTES = 8 << 20
    ONE_SHOT_BYTES = 256 << 10

    def __init__(self, device: torch.device) -> None:
        from torch.distributed import _symmetric_memory as symmetric_memory

        self.group_name = torch.distributed.group.WORLD.group_name
        self.buffers: dict[torch.dtype, torch.Tensor] = {}
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            size = self.MAX_BYTES // dtype.itemsize
            buffer = symmetric_memory.empty(size, dtype=dtype, device=device)
            symmetric_memory.rendezvous(buffer, self.group_name)
            self.buffers[dtype] = buffer
        # Not in every PyTorch build that has symmetric memory.
        self.one_shot = getattr(torch.ops.symm_mem, "one_shot_all_reduce_copy_out", None)

    def fits(self, x: torch.Tensor) -> bool:
        return (
            x.dtype in self.buffers
            and x.is_contiguous()
            and x.numel() * x.element_size() <= self.MAX_BYTES
        )

    def all_reduce_(self, x: torch.Tensor) -> None:
        buffer = self.buffers[x.dtype][: x.numel()]
        flat = x.view(-1)
        if self.one_shot is not None and x.numel() * x.element_size() <= self.ONE_SHOT_BYTES:
            self.one_shot(buffer, flat, "sum", self.group_name, flat)
            return
        buffer.copy_(flat)
        torch.ops.symm_mem.two_shot_all_reduce_(buffer, "sum", self.group_name)
        flat.copy_(buffer)


def setup_fast_all_reduce(device: torch.device) -> bool:
    """Called by every rank at the same point after joining the group: use symmetric-memory
    all-reduces if FAST_ALL_REDUCE_ENV asks for them and every rank could set them up (the
    ranks agree, or one would wait in a collective the others never call)."""
    global _fast_all_reduce
    _fast_all_reduce = None
    if device.type != "cuda" or not torch.distributed.is_initialized():
        return False
    candidate = None
    if os.environ.get(FAST_ALL_REDUCE_ENV, "nccl") == "symm_mem":
        try:
            candidate = _SymmetricMemoryAllReduce(device)
        except Exception as exc:  # unsupported here: NCCL serves
            logger.warning("symmetric-memory all-reduce unavailable (%s); using NCCL", exc)
    agreed = all_reduce_min(int(candidate is not None), device)
    _fast_all_reduce = candidate if agreed else None
    if _fast_all_reduce is not None:
        logger.info("tensor-parallel all-reduces of up to 8 MiB use symmetric memory")
    return _fast_all_reduce is not None


def fast_all_reduce_active() -> bool:
    return _fast_all_reduce is not None


def gather_last_dim(x: torch.Tensor, rank: int, size: int) -> torch.Tensor | None:
    """Concatenate every rank's `x` along the last dimension on rank 0; None on the others."""
    parts = [torch.empty_like(x) for _ in range(size)] if rank == 0 else None
    if x.numel():  # all ranks see the same row count, so all skip an empty gather together
        torch.distributed.gather(x, parts, dst=0)
    return None if parts is None else torch.cat(parts, dim=-1)


def all_reduce_min(value: int, device: torch.device) -> int:
    """The smallest `value` over all ranks (e.g. the KV blocks every rank can hold)."""
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
    return int(tensor.item())


def rank_device(device: torch.device, rank: int, size: int) -> torch.device:
    """The device of `rank`: with several ranks on CUDA, one GPU each from `device`'s index on."""
    if device.type != "cuda" or size == 1:
        return device
    return torch.device("cuda", (device.index or 0) + rank)
