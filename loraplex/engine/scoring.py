"""Logits at every position of a prompt (teacher forcing), for quality checks of quantized
weights or KV caches against a reference run of the same engine."""

from __future__ import annotations

import torch

from loraplex.engine.context import forward_context
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.scheduler import ScheduledBatch
from loraplex.sampling_params import SamplingParams


@torch.inference_mode()
def prompt_logits(engine: LLMEngine, token_ids: list[int]) -> torch.Tensor:
    """Float32 logits [len(token_ids), vocab]: row i predicts token i + 1.

    Runs one prefill outside the scheduler on an idle engine (single process), paging the
    prompt through the KV cache exactly as serving does, then frees its blocks.
    """
    if engine.has_unfinished_requests():
        raise ValueError("prompt_logits needs an idle engine")
    if engine.config.parallel.tensor_parallel_size != 1:
        raise ValueError("prompt_logits runs in a single process (tensor_parallel_size=1)")
    request = engine.make_request("score", token_ids, SamplingParams(max_tokens=1))
    seq = request.seqs[0]
    engine.block_manager.allocate(seq, len(token_ids))
    try:
        runner = engine.model_runner
        model_input = runner.prepare(ScheduledBatch([seq], [len(token_ids)]))
        with forward_context(model_input.context):
            hidden = runner.model(model_input.input_ids, model_input.positions)
            return runner.model.compute_logits(hidden)
    finally:
        engine.block_manager.free(seq)
