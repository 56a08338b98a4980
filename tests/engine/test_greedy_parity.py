"""Greedy decoding matches transformers token for token on each architecture's tiny preset,
also when a small KV cache forces preemption and chunked prefill."""

import random

import pytest

from loraplex import LLM, SamplingParams

from .peft_adapters import peft_greedy

ARCHS = ["llama", "mistral", "qwen2"]
MAX_TOKENS = 32
# Lengths from 1 to 200 tokens; the longest cross mistral's 64-token sliding window.
PROMPT_LENGTHS = [1, 2, 3, 5, 8, 13, 21, 34, 50, 64, 65, 90, 120, 150, 180, 200]


def make_prompts(vocab_size: int, bos_id: int) -> list[list[int]]:
    rng = random.Random(1234)
    prompts = []
    for length in PROMPT_LENGTHS:
        body = [rng.randrange(4, vocab_size) for _ in range(length - 1)]
        prompts.append([bos_id, *body])
    return prompts


@pytest.fixture(scope="module", params=ARCHS)
def arch_case(request, tiny_model_dirs):
    """(model dir, prompts, transformers' greedy continuation of each prompt alone)."""
    from transformers import AutoConfig, AutoTokenizer

    model_dir = tiny_model_dirs[request.param]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = make_prompts(AutoConfig.from_pretrained(model_dir).vocab_size, tokenizer.bos_token_id)
    return model_dir, prompts, peft_greedy(model_dir, None, prompts, MAX_TOKENS)


def greedy(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]


def test_greedy_matches_transformers(arch_case, test_device):
    model_dir, prompts, expected = arch_case
    llm = LLM(model_dir, dtype="float32", device=test_device, max_model_len=512)
    assert greedy(llm, prompts) == expected


def test_greedy_matches_with_preemption_and_chunked_prefill(arch_case, test_device):
    model_dir, prompts, expected = arch_case
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


def test_linear_rope_scaling_and_sharded_checkpoint_match_transformers(
    tiny_model_dirs, tmp_path, test_device
):
    """A variant of the tiny llama with `linear` rope scaling, saved in several shards."""
    import json

    from loraplex.modelgen import make_model

    model_dir = make_model("tiny", tmp_path / "sharded", arch="llama", max_shard_bytes=1_500_000)
    assert (model_dir / "model.safetensors.index.json").is_file()
    config = json.loads((model_dir / "config.json").read_text())
    linear = {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    config["rope_parameters"] = linear
    config["rope_scaling"] = {"rope_type": "linear", "factor": 4.0}
    (model_dir / "config.json").write_text(json.dumps(config))

    prompts = make_prompts(config["vocab_size"], 0)[::3]
    expected = peft_greedy(str(model_dir), None, prompts, MAX_TOKENS)
    llm = LLM(str(model_dir), dtype="float32", device=test_device, max_model_len=512)
    assert greedy(llm, prompts) == expected
