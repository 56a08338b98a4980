"""Per-forward metadata that layers read instead of threading it through every forward()."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ForwardContext:
    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot of each new token, -1 = padding
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32
    context_lens: torch.Tensor  # [num_seqs] int32: tokens in the cache after this step
    cu_seqlens_q: torch.Tensor  # [num_seqs + 1] int32: where each sequence's queries start
    max_query_len: int  # host copies of the maxima, so launchers never sync with the GPU
    max_context_len: int
    lora: Any = None  # LoRA kernel metadata for the batch (None: no adapter in it)


_current: ForwardContext | None = None


@contextmanager
def forward_context(ctx: ForwardContext) -> Iterator[ForwardContext]:
    global _current
    previous, _current = _current, ctx
    try:
        yield ctx
    finally:
        _current = previous


def get_forward_context() -> ForwardContext:
    if _current is None:
        raise RuntimeError("no forward context: layers run only inside ModelRunner's forward pass")
    return _current
