"""Runs the model on one device: builds it, owns the KV cache, turns a scheduled batch into
tensors, and returns the logits of the sequences that sample this step.

Under tensor parallelism every rank has one ModelRunner holding its shard of the model and of
the KV cache; the driver's (rank 0) prepares each step's input and receives the logits."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from loraplex.config import EngineConfig
from loraplex.engine.context import ForwardContext, forward_context
from loraplex.engine.cuda_graphs import DecodeGraphs
from loraplex.engine.distributed import (
    all_reduce_min,
    rank_device,
    setup_fast_all_reduce,
    tensor_parallel,
)
from loraplex.engine.layers.fp8 import fp8_checkpoint_weights, is_fp8_checkpoint
from loraplex.engine.layers.lora import LoRALayers, apply_lora
from loraplex.engine.loader import load_weights
from loraplex.engine.models.registry import resolve_model_class
from loraplex.engine.scheduler import ScheduledBatch
from loraplex.kernels.lora_meta import LoRAKernelMeta
from loraplex.kernels.reference import FP8_DTYPE

logger = logging.getLogger(__name__)

# Left free beside the KV cache for allocations outside PyTorch's allocator (cuBLAS, NCCL).
FREE_MEMORY_MARGIN = 512 << 20


@contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@dataclass
class ModelInput:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    context: ForwardContext
    logits_indices: torch.Tensor  # [num_sampling_seqs]: rows of the last token of each


class ModelRunner:
    def __init__(self, config: EngineConfig, rank: int = 0) -> None:
        """Build shard `rank` of the model. With several ranks every rank builds its runner at
        the same time: loading ends with collectives (the KV-block count) over the group."""
        self.config = config
        model_cfg = config.model
        self.tp_size = config.parallel.tensor_parallel_size
        self.device = rank_device(model_cfg.device, rank, self.tp_size)
        self.dtype = model_cfg.dtype
        self.block_size = config.cache.block_size
        # Memory this process held before this runner (another engine, say): not ours to size.
        self._memory_before = (
            torch.cuda.memory_allocated(self.device) if self.device.type == "cuda" else 0
        )
        torch.manual_seed(model_cfg.seed)
        if self.tp_size > 1:
            setup_fast_all_reduce(self.device)
        model_class = resolve_model_class(model_cfg.hf_config)
        fp8_checkpoint = is_fp8_checkpoint(model_cfg.hf_config)
        with (
            tensor_parallel(rank, self.tp_size),
            _default_dtype(self.dtype),
            torch.device(self.device),
            fp8_checkpoint_weights(fp8_checkpoint),
        ):
            self.model = model_class(model_cfg.hf_config)
        self.checkpoint_kv_scales = load_weights(self.model, model_cfg.model)
        if model_cfg.quantization == "fp8" and not fp8_checkpoint:
            for module in self.model.modules():
                if hasattr(module, "quantize_fp8_"):  # linear layers and stacked experts
                    module.quantize_fp8_()
        for layer in self.model.model.layers:
            layer.use_fp8_activations()
        self.model.eval()
        self.lora_layers = LoRALayers({}, {})
        if config.lora is not None:
            self.lora_layers = apply_lora(
                self.model, config.lora.max_loras, config.lora.max_lora_rank
            )
        for layer in self.model.model.layers:  # after LoRA wrapped the layers it applies to
            layer.defer_norms_to_projections()
        self.attention_layers = [m for m in self.model.modules() if _is_attention(m)]
        self.kv_dtype = FP8_DTYPE if config.cache.cache_dtype.startswith("fp8") else self.dtype
        self.num_blocks = self._decide_num_blocks()
        self._allocate_kv_cache()
        self.graphs: DecodeGraphs | None = None
        if self.device.type == "cuda" and not model_cfg.enforce_eager:
            self.graphs = DecodeGraphs(self, config.scheduler.max_num_seqs)
            self.graphs.capture()

    # ---- KV cache -------------------------------------------------------------------------

    @property
    def bytes_per_block(self) -> int:
        layer = self.attention_layers[0]
        per_token = 2 * layer.num_kv_heads * layer.head_dim * self.kv_dtype.itemsize
        return per_token * self.block_size * len(self.attention_layers)

    def _decide_num_blocks(self) -> int:
        cache, sched = self.config.cache, self.config.scheduler
        if cache.num_blocks_override is not None:
            num_blocks = cache.num_blocks_override
        elif self.device.type == "cuda":
            num_blocks = self._profile_num_blocks()
        else:
            useful = sched.max_num_seqs * -(-sched.max_model_len // self.block_size)
            num_blocks = min(cache.cpu_kv_cache_bytes // self.bytes_per_block, useful)
        if self.tp_size > 1:  # the driver's block manager allocates for every rank
            num_blocks = all_reduce_min(num_blocks, self.device)
        capacity = num_blocks * self.block_size
        if capacity < sched.max_model_len:
            raise ValueError(
                f"the KV cache holds {capacity} tokens ({num_blocks} blocks), fewer than "
                f"max_model_len={sched.max_model_len}; lower max_model_len or give the cache "
                "more memory (gpu_memory_utilization)"
            )
        return num_blocks

    def _profile_num_blocks(self) -> int:
        """Blocks that fit in this engine's share of the GPU (`gpu_memory_utilization` of the
        total, as in vLLM: this engine's weights and worst-case forward pass included, memory
        of other engines and processes not) and in the memory actually free."""
        sched = self.config.scheduler
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        tokens = min(sched.max_num_batched_tokens, sched.max_model_len)
        probe_blocks = -(-tokens // self.block_size)
        self.num_blocks = probe_blocks
        self._allocate_kv_cache()
        self._run_probe(tokens)
        probe_bytes = probe_blocks * self.bytes_per_block
        peak = torch.cuda.max_memory_allocated(self.device) - self._memory_before - probe_bytes
        for layer in self.attention_layers:
            layer.k_cache = layer.v_cache = torch.empty(0)
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        activations = peak - (torch.cuda.memory_allocated(self.device) - self._memory_before)
        budget = min(
            total * self.config.cache.gpu_memory_utilization - peak,
            free - activations - FREE_MEMORY_MARGIN,
        )
        return max(int(budget // self.bytes_per_block), 0)

    def _run_probe(self, num_tokens: int) -> None:
        block_table = torch.arange(self.num_blocks, dtype=torch.int32, device=self.device)
        ctx = ForwardContext(
            slot_mapping=torch.arange(num_tokens, dtype=torch.int64, device=self.device),
            block_tables=block_table[None, :],
            context_lens=torch.tensor([num_tokens], dtype=torch.int32, device=self.device),
            cu_seqlens_q=torch.tensor([0, num_tokens], dtype=torch.int32, device=self.device),
            max_query_len=num_tokens,
            max_context_len=num_tokens,
        )
        ids = torch.zeros(num_tokens, dtype=torch.int64, device=self.device)
        positions = torch.arange(num_tokens, dtype=torch.int64, device=self.device)
        with torch.inference_mode(), forward_context(ctx):
            hidden = self.model(ids, positions)
            self.model.compute_logits(
                hidden[-min(num_tokens, self.config.scheduler.max_num_seqs) :]
            )
        torch.cuda.synchronize()

    def _allocate_kv_cache(self) -> None:
        for index, layer in enumerate(self.attention_layers):
            shape = (self.num_blocks, self.block_size, layer.num_kv_heads, layer.head_dim)
            layer.k_cache = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
            layer.v_cache = torch.zeros(shape, dtype=self.kv_dtype, device=self.device)
            if self.kv_dtype == FP8_DTYPE:
                scales = self.checkpoint_kv_scales.get(index, {})
                for kind in ("k", "v"):
                    value = torch.tensor(scales.get(kind, 1.0), dtype=torch.float32)
                    setattr(layer, f"{kind}_scale", value.to(self.device))
        if self.kv_dtype == FP8_DTYPE:
            logger.info(
                "FP8 KV cache scales: %s",
                "from the checkpoint (1.0 where it has none)"
                if self.checkpoint_kv_scales
                else "1.0 (the checkpoint has none)",
            )
        logger.info(
            "KV cache: %d blocks of %d tokens (%.2f GiB)",
            self.num_blocks,
            self.block_size,
            self.num_blocks * self.bytes_per_block / 2**30,
        )

    # ---- forward --------------------------------------------------------------------------

    def prepare(
        self,
        batch: ScheduledBatch,
        lora_slots: dict | None = None,
        pending_tokens: torch.Tensor | None = None,
    ) -> ModelInput:
        """Tensors of one step; `lora_slots` maps each adapter in the batch to its GPU slot.
        A sequence's token the host has not read yet (`num_pending`) is taken on the device
        from `pending_tokens`, the previous step's sampled ids, at its `pending_row`.

        Built with numpy and sent in two host-to-device copies (one int64, one int32 buffer)
        whatever the batch size: at small batches each extra tensor costs as much host time
        as a layer of the model."""
        seqs, counts = batch.seqs, batch.num_new_tokens
        num_seqs = len(seqs)
        starts = np.fromiter((seq.num_computed_tokens for seq in seqs), np.int64, num_seqs)
        new = np.asarray(counts, dtype=np.int64)
        ends = starts + new
        cu_seqlens = np.zeros(num_seqs + 1, dtype=np.int64)
        np.cumsum(new, out=cu_seqlens[1:])
        num_tokens = int(cu_seqlens[-1])
        seq_of_token = np.repeat(np.arange(num_seqs), new)
        positions = np.arange(num_tokens, dtype=np.int64) + np.repeat(starts - cu_seqlens[:-1], new)
        total = np.fromiter((seq.num_tokens for seq in seqs), np.int64, num_seqs)
        input_ids, fill_rows, fill_from = _host_input_ids(seqs, starts, ends, cu_seqlens)
        if fill_rows.size and pending_tokens is None:
            raise RuntimeError("a sequence waits for a sampled token but none was passed")
        width = max(len(seq.block_table) for seq in seqs)
        tables = np.zeros((num_seqs, width), dtype=np.int32)
        for row, seq in enumerate(seqs):
            tables[row, : len(seq.block_table)] = seq.block_table
        bs = self.block_size
        slots = tables[seq_of_token, positions // bs].astype(np.int64) * bs + positions % bs
        logits_indices = (cu_seqlens[1:] - 1)[ends == total]
        int32_parts = [tables.reshape(-1), ends, cu_seqlens]
        if lora_slots:
            seq_lora = np.fromiter(
                (lora_slots.get(seq.request.lora_adapter, -1) for seq in seqs), np.int64, num_seqs
            )
            int32_parts.append(np.repeat(seq_lora, new))
        wide = self._to_device(
            np.concatenate([input_ids, positions, slots, logits_indices, fill_rows, fill_from])
        )
        narrow = self._to_device(np.concatenate(int32_parts).astype(np.int32))
        sizes = [num_tokens, num_tokens, num_tokens, len(logits_indices)]
        wide_parts = wide.split([*sizes, fill_rows.size, fill_from.size])
        if fill_rows.size:
            wide_parts[0].index_copy_(
                0, wide_parts[4], pending_tokens.index_select(0, wide_parts[5])
            )
        narrow_parts = narrow.split([p.size for p in int32_parts])
        ctx = ForwardContext(
            slot_mapping=wide_parts[2],
            block_tables=narrow_parts[0].view(num_seqs, width),
            context_lens=narrow_parts[1],
            cu_seqlens_q=narrow_parts[2],
            max_query_len=int(new.max()),
            max_context_len=int(ends.max()),
        )
        if lora_slots:
            ctx.lora = LoRAKernelMeta.build(
                narrow_parts[3], self.config.lora.max_loras, prefill=ctx.max_query_len > 1
            )
        return ModelInput(
            input_ids=wide_parts[0],
            positions=wide_parts[1],
            context=ctx,
            logits_indices=wide_parts[3],
        )

    def _to_device(self, values: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(values)
        if self.device.type != "cuda":
            return tensor.to(self.device)
        return tensor.pin_memory().to(self.device, non_blocking=True)

    @torch.inference_mode()
    def execute(
        self,
        batch: ScheduledBatch,
        lora_slots: dict | None = None,
        pending_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Float32 logits [num_sampling_seqs, vocab] for the sequences that finish their
        prompt or decode this step, in batch order."""
        return self.run(self.prepare(batch, lora_slots, pending_tokens))

    @torch.inference_mode()
    def run(self, model_input: ModelInput) -> torch.Tensor | None:
        """The forward pass of a prepared step: the logits on rank 0, None on other ranks."""
        ctx = model_input.context
        num_tokens = model_input.input_ids.shape[0]
        if self.graphs is not None and self.graphs.can_run(ctx, num_tokens):
            hidden = self.graphs.run(model_input.input_ids, model_input.positions, ctx)
            return self.model.compute_logits(hidden[model_input.logits_indices])
        with forward_context(ctx):
            hidden = self.model(model_input.input_ids, model_input.positions)
            return self.model.compute_logits(hidden[model_input.logits_indices])


def _host_input_ids(
    seqs: list, starts: np.ndarray, ends: np.ndarray, cu_seqlens: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input ids known on the host, 0 where a token is pending; the rows of the pending
    tokens; the rows of the previous step's samples that hold them)."""
    ids = np.zeros(int(cu_seqlens[-1]), dtype=np.int64)
    fill_rows: list[int] = []
    fill_from: list[int] = []
    for i, seq in enumerate(seqs):
        start, end, offset = int(starts[i]), int(ends[i]), int(cu_seqlens[i])
        known = seq.token_ids[start:end]
        ids[offset : offset + len(known)] = known
        if len(known) < end - start:  # the last one is the pending token
            fill_rows.append(offset + end - start - 1)
            fill_from.append(seq.pending_row)
    return ids, np.asarray(fill_rows, dtype=np.int64), np.asarray(fill_from, dtype=np.int64)


def _is_attention(module: torch.nn.Module) -> bool:
    from loraplex.engine.layers.attention import Attention

    return isinstance(module, Attention)
