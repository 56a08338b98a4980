"""Tensor-parallel state and the collectives the layers use.

Layers read `tp_rank()` / `tp_size()` once, when they are built inside `tensor_parallel(...)`,
and keep their shard's rank and size; so a process may hold a single-rank engine beside the
driver rank of a sharded one. With one rank no collective is ever called.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_tp_rank = 0
_tp_size = 1


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
        torch.distributed.all_reduce(x)
    return x


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
