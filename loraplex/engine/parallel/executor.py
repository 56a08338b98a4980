"""The executor runs the model for the engine: `LLMEngine` hands it each scheduled batch and
every LoRA slot to fill, and samples from the logits it returns.

With one rank it is a thin shell around this process's ModelRunner. With several,
`TensorParallelExecutor` also drives the worker processes that hold the other shards.
"""

from __future__ import annotations

import torch

from loraplex.config import EngineConfig
from loraplex.engine.layers.lora import SlotWeights, write_lora_slot
from loraplex.engine.model_runner import ModelRunner
from loraplex.engine.scheduler import ScheduledBatch


class Executor:
    """Runs every layer in this process."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.runner = ModelRunner(config)

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def num_blocks(self) -> int:
        """KV-cache blocks every rank holds; the driver's block manager hands them out."""
        return self.runner.num_blocks

    def execute(
        self,
        batch: ScheduledBatch,
        lora_slots: dict | None = None,
        pending_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Float32 logits [num_sampling_seqs, vocab] of one step (see ModelRunner.execute)."""
        return self.runner.execute(batch, lora_slots, pending_tokens)

    def write_lora_slot(self, slot: int, weights: SlotWeights) -> None:
        """Fill LoRA slot `slot` with one adapter's full-size weights."""
        write_lora_slot(self.runner.lora_layers, slot, weights)

    def shutdown(self) -> None:
        """Release what the executor holds beyond memory (nothing, with one rank)."""


def create_executor(config: EngineConfig) -> Executor:
    if config.parallel.tensor_parallel_size > 1:
        from loraplex.engine.parallel.tp_executor import TensorParallelExecutor

        return TensorParallelExecutor(config)
    return Executor(config)
