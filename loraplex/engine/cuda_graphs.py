"""CUDA graphs for decode steps: the eager forward of a decode batch is bound by the host
launching ~30 kernels per layer, so each batch-size bucket's forward is captured once and
replayed with the step's inputs copied into static buffers.

A decode batch of n sequences runs in the smallest bucket >= n; the padding rows write no KV
(slot -1), attend to one cached token of block 0 and use no adapter, and their outputs are
dropped. The split plan of the decode-attention kernel is fixed at capture for `max_model_len`
(graphs cannot change launch shapes), which the kernel serves for any shorter context. With
LoRA enabled each bucket is captured twice, with and without the LoRA path, so base-model-only
batches skip it as the eager forward does. Slot indices are graph inputs: loading another
adapter into a slot needs no recapture.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from loraplex.engine.context import ForwardContext, forward_context
from loraplex.kernels.lora_meta import LoRAKernelMeta

logger = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then steps of 8 up to 64 and of 16 beyond, capped at max_batch."""
    sizes = [1, 2, 4, 8, *range(16, 65, 8), *range(80, max_batch + 1, 16)]
    buckets = sorted({min(size, max_batch) for size in sizes} | {max_batch})
    return [size for size in buckets if size <= max_batch]


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    hidden: torch.Tensor  # [bucket, hidden] output written by each replay


class DecodeGraphs:
    def __init__(self, runner, max_batch: int) -> None:
        self.runner = runner
        self.device = runner.device
        self.max_batch = max_batch
        self.buckets = batch_buckets(max_batch)
        self.max_context_len = runner.config.scheduler.max_model_len
        self.max_loras = runner.config.lora.max_loras if runner.config.lora else 0
        blocks_per_seq = -(-self.max_context_len // runner.block_size)
        zeros = {"device": self.device}
        self.input_ids = torch.zeros(max_batch, dtype=torch.int64, **zeros)
        self.positions = torch.zeros(max_batch, dtype=torch.int64, **zeros)
        self.slot_mapping = torch.full((max_batch,), -1, dtype=torch.int64, **zeros)
        self.context_lens = torch.ones(max_batch, dtype=torch.int32, **zeros)
        self.block_tables = torch.zeros(max_batch, blocks_per_seq, dtype=torch.int32, **zeros)
        self.cu_seqlens_q = torch.arange(max_batch + 1, dtype=torch.int32, **zeros)
        self.token_lora = torch.full((max_batch,), -1, dtype=torch.int32, **zeros)
        self.graphs: dict[tuple[int, bool], _Graph] = {}
        self.pool = None

    def _context(self, size: int, lora: bool) -> ForwardContext:
        ctx = ForwardContext(
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:size],
            context_lens=self.context_lens[:size],
            cu_seqlens_q=self.cu_seqlens_q[: size + 1],
            max_query_len=1,
            max_context_len=self.max_context_len,
        )
        if lora:
            ctx.lora = LoRAKernelMeta.build(self.token_lora[:size], self.max_loras)
        return ctx

    def _forward(self, size: int, lora: bool) -> torch.Tensor:
        with forward_context(self._context(size, lora)):
            return self.runner.model(self.input_ids[:size], self.positions[:size])

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket (largest first, sharing one memory pool); logs time and memory."""
        started = time.perf_counter()
        before = torch.cuda.mem_get_info()[0]
        variants = [False, True] if self.max_loras else [False]
        for size in reversed(self.buckets):
            for lora in variants:
                self._forward(size, lora)  # compiles every kernel for this shape first
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    hidden = self._forward(size, lora)
                if self.pool is None:
                    self.pool = graph.pool()
                self.graphs[(size, lora)] = _Graph(graph, hidden)
        torch.cuda.synchronize()
        self.capture_seconds = time.perf_counter() - started
        self.capture_bytes = before - torch.cuda.mem_get_info()[0]
        logger.info(
            "captured %d decode CUDA graphs (batch sizes up to %d) in %.1f s using %.2f GiB",
            len(self.graphs),
            self.max_batch,
            self.capture_seconds,
            self.capture_bytes / 2**30,
        )

    def can_run(self, context: ForwardContext, num_tokens: int) -> bool:
        return (
            context.max_query_len == 1
            and num_tokens <= self.max_batch
            and context.block_tables.shape[1] <= self.block_tables.shape[1]
        )

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, context: ForwardContext):
        """Hidden states [n, hidden] of a decode batch of n sequences, by graph replay."""
        n = input_ids.shape[0]
        size = next(bucket for bucket in self.buckets if bucket >= n)
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(context.slot_mapping)
        self.slot_mapping[n:size].fill_(-1)
        self.context_lens[:n].copy_(context.context_lens)
        self.context_lens[n:size].fill_(1)
        width = context.block_tables.shape[1]
        self.block_tables[:n, :width].copy_(context.block_tables)
        self.block_tables[n:size, 0].fill_(0)
        lora = context.lora is not None
        if lora:
            self.token_lora[:n].copy_(context.lora.token_lora)
            self.token_lora[n:size].fill_(-1)
        entry = self.graphs[(size, lora)]
        entry.graph.replay()
        return entry.hidden[:n]
