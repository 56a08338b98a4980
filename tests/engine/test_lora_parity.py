"""Mixed-adapter batches give, per prompt, exactly the greedy tokens peft gives with that
adapter active alone; also when slots are too few and adapters get evicted mid-call."""

import random

import pytest

from loraplex import LLM, LoRARequest, SamplingParams

from .peft_adapters import make_adapters, peft_greedy

MAX_TOKENS = 24


@pytest.fixture(scope="module")
def setup(tiny_model_dirs, tmp_path_factory):
    model_dir = tiny_model_dirs["llama"]
    adapters = make_adapters(model_dir, tmp_path_factory.mktemp("adapters"), 8)
    rng = random.Random(7)
    prompts = [
        [1] + [rng.randrange(4, 2000) for _ in range(rng.randrange(2, 60))] for _ in range(27)
    ]
    # Prompt i uses adapter (i % 9) - 1: every adapter and the base model appear three times.
    choice = [(i % 9) - 1 for i in range(len(prompts))]
    expected = [None] * len(prompts)
    for adapter_index in range(-1, 8):
        rows = [i for i, c in enumerate(choice) if c == adapter_index]
        path = None if adapter_index < 0 else adapters[adapter_index]
        for row, tokens in zip(
            rows, peft_greedy(model_dir, path, [prompts[r] for r in rows], MAX_TOKENS), strict=True
        ):
            expected[row] = tokens
    return model_dir, adapters, prompts, choice, expected


def requests_for(adapters, choice, limit):
    return [
        None if c < 0 or c >= limit else LoRARequest(f"a{c}", c + 1, str(adapters[c]))
        for c in choice
    ]


def test_mixed_batch_matches_peft(setup, test_device):
    model_dir, adapters, prompts, choice, expected = setup
    rows = [i for i, c in enumerate(choice) if c < 4]
    llm = LLM(
        model_dir,
        dtype="float32",
        device=test_device,
        enable_lora=True,
        max_loras=4,
        max_lora_rank=16,
        max_model_len=256,
    )
    loras = requests_for(adapters, [choice[i] for i in rows], 4)
    outputs = llm.generate(
        [prompts[i] for i in rows], SamplingParams(temperature=0, max_tokens=MAX_TOKENS), loras
    )
    assert [o.outputs[0].token_ids for o in outputs] == [expected[i] for i in rows]


def test_eviction_with_two_slots_and_eight_adapters(setup, test_device):
    model_dir, adapters, prompts, choice, expected = setup
    llm = LLM(
        model_dir,
        dtype="float32",
        device=test_device,
        enable_lora=True,
        max_loras=2,
        max_cpu_loras=3,
        max_lora_rank=16,
        max_model_len=256,
    )
    loras = requests_for(adapters, choice, 8)
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS), loras)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    manager = llm.llm_engine.lora_manager
    assert manager.num_evictions > 0
    assert manager.num_loads >= 8
