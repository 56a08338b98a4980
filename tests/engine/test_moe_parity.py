"""Mixture-of-experts models (Mixtral, Qwen2-MoE) decode greedily exactly as transformers does,
in one `generate` call over 16 prompts, also when a small KV cache forces preemption and chunked
prefill, with two tensor-parallel ranks, and from a checkpoint that transformers itself wrote
(dense layers between sparse ones, unnormalised top-k weights)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from loraplex import LLM, SamplingParams

from .peft_adapters import peft_greedy

MOE_ARCHS = ["mixtral", "qwen2_moe"]
MAX_TOKENS = 24
PROMPT_LENGTHS = [1, 2, 3, 5, 8, 13, 21, 34, 50, 64, 65, 90, 120, 150, 180, 200]


def make_prompts(lengths: list[int], vocab_size: int, seed: int = 1234) -> list[list[int]]:
    rng = random.Random(seed)
    return [[0] + [rng.randrange(4, vocab_size) for _ in range(n - 1)] for n in lengths]


def transformers_greedy(model_dir: str | Path, prompts: list[list[int]]) -> list[list[int]]:
    return peft_greedy(str(model_dir), None, prompts, MAX_TOKENS)


def greedy(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]


@pytest.fixture(scope="module", params=MOE_ARCHS)
def moe_case(request):
    """(model dir, prompts, transformers' greedy continuation of each prompt alone)."""
    from loraplex.modelgen import cached_model

    model_dir = str(cached_model("tiny", request.param))
    prompts = make_prompts(PROMPT_LENGTHS, 2048)
    return model_dir, prompts, transformers_greedy(model_dir, prompts)


def test_greedy_matches_transformers(moe_case, test_device):
    model_dir, prompts, expected = moe_case
    llm = LLM(model_dir, dtype="float32", device=test_device, max_model_len=512)
    assert greedy(llm, prompts) == expected


def test_greedy_matches_with_preemption_and_chunked_prefill(moe_case, test_device):
    model_dir, prompts, expected = moe_case
    # 24 blocks of 16 tokens: a single 200-token prompt plus its output fits, 16 prompts do not.
    llm = LLM(
        model_dir,
        dtype="float32",
        device=test_device,
        max_model_len=256,
        num_gpu_blocks_override=24,
        max_num_batched_tokens=48,
    )
    assert greedy(llm, prompts) == expected
    assert llm.llm_engine.scheduler.num_preemptions > 0
    assert llm.llm_engine.block_manager.num_free_blocks == 24


def test_greedy_matches_with_two_tensor_parallel_ranks(moe_case, test_device):
    """Experts split over their intermediate dimension, the router replicated (gloo on CPU)."""
    if test_device.startswith("cuda") and torch.cuda.device_count() < 2:
        pytest.skip("tensor_parallel_size=2 on CUDA needs two GPUs")
    model_dir, prompts, expected = moe_case
    llm = LLM(
        model_dir, dtype="float32", device=test_device, max_model_len=512, tensor_parallel_size=2
    )
    try:
        assert greedy(llm, prompts) == expected
        experts = llm.llm_engine.model_runner.model.model.layers[0].mlp.experts
        config = json.loads((Path(model_dir) / "config.json").read_text())
        inter = config.get("moe_intermediate_size") or config["intermediate_size"]
        assert experts.down_proj.weight.shape[2] == inter // 2
    finally:
        llm.llm_engine.shutdown()


def test_experts_are_stacked_and_the_mlp_is_sparse(moe_case, test_device):
    from loraplex.engine.models.moe import MoEExperts

    model_dir, _, _ = moe_case
    llm = LLM(model_dir, dtype="float32", device=test_device, max_model_len=128)
    model = llm.llm_engine.model_runner.model
    config = json.loads((Path(model_dir) / "config.json").read_text())
    num_experts = config.get("num_local_experts") or config["num_experts"]
    inter = config.get("moe_intermediate_size") or config["intermediate_size"]
    for layer in model.model.layers:
        experts = layer.mlp.experts
        assert isinstance(experts, MoEExperts)
        assert experts.gate_up_proj.weight.shape == (num_experts, 2 * inter, 128)
        assert experts.down_proj.weight.shape == (num_experts, 128, inter)
        assert not hasattr(layer.mlp, "gate_up_proj")


def _transformers_written_qwen2_moe(folder: Path, source: Path) -> Path:
    """A Qwen2-MoE saved by transformers' own save_pretrained: layer 0 dense (mlp_only_layers),
    layer 1 sparse, top-k weights not renormalised; weights redrawn at a decisive scale."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    config.mlp_only_layers = [0]
    config.norm_topk_prob = False
    config.num_experts_per_tok = 2
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(1.0, 0.1)
            elif name.endswith("embed_tokens.weight") or param.dim() == 1:
                param.normal_(0.0, 1.0 if param.dim() == 2 else 0.25)
            else:
                param.normal_(0.0, param.shape[-1] ** -0.5)
        model.lm_head.weight.mul_(4.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def test_checkpoint_written_by_transformers_with_a_dense_layer(tmp_path, test_device):
    from safetensors import safe_open

    from loraplex.modelgen import cached_model

    folder = _transformers_written_qwen2_moe(tmp_path / "hf", cached_model("tiny", "qwen2_moe"))
    with safe_open(folder / "model.safetensors", framework="pt") as weights:
        names = set(weights.keys())
    assert "model.layers.0.mlp.gate_proj.weight" in names
    assert "model.layers.1.mlp.experts.3.up_proj.weight" in names
    prompts = make_prompts(PROMPT_LENGTHS[::2], 2048, seed=5)
    expected = transformers_greedy(folder, prompts)
    llm = LLM(str(folder), dtype="float32", device=test_device, max_model_len=256)
    assert greedy(llm, prompts) == expected
    layers = llm.llm_engine.model_runner.model.model.layers
    assert hasattr(layers[0].mlp, "gate_up_proj") and hasattr(layers[1].mlp, "experts")


@pytest.mark.parametrize("tensor_parallel_size", [1, 2])
def test_checkpoint_in_the_stacked_expert_layout(
    moe_case, tmp_path, test_device, tensor_parallel_size
):
    """transformers 5 can write experts stacked (`experts.gate_up_proj` [E, 2I, H],
    `experts.down_proj` [E, H, I]); that layout loads too, also split over two ranks."""
    if test_device.startswith("cuda") and torch.cuda.device_count() < tensor_parallel_size:
        pytest.skip(f"tensor_parallel_size={tensor_parallel_size} on CUDA needs that many GPUs")
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, prompts, expected = moe_case
    folder = tmp_path / "stacked"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.save_pretrained(folder, save_original_format=False)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    with safe_open(folder / "model.safetensors", framework="pt") as weights:
        names = set(weights.keys())
    assert "model.layers.0.mlp.experts.gate_up_proj" in names
    assert not any(".experts.0." in name for name in names)
    llm = LLM(
        str(folder),
        dtype="float32",
        device=test_device,
        max_model_len=512,
        tensor_parallel_size=tensor_parallel_size,
    )
    try:
        assert greedy(llm, prompts) == expected
    finally:
        llm.llm_engine.shutdown()
