"""Decode CUDA graphs: buckets on any machine; replay equals the eager forward on a GPU."""

import pytest

from loraplex.engine.cuda_graphs import batch_buckets


def test_buckets_cover_every_batch_size_up_to_the_maximum():
    for max_batch in (1, 3, 8, 57, 256):
        buckets = batch_buckets(max_batch)
        assert buckets == sorted(set(buckets)) and buckets[-1] == max_batch
        if max_batch >= 8:
            assert buckets[:4] == [1, 2, 4, 8]
        for n in range(1, max_batch + 1):
            assert any(b >= n for b in buckets)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_graph_replay_equals_eager_with_and_without_lora(tiny_model_dirs, tmp_path, dtype):
    from loraplex import LLM, LoRARequest, SamplingParams

    from .peft_adapters import make_adapters

    model = tiny_model_dirs["llama"]
    adapters = make_adapters(model, tmp_path, 2)
    # A fixed block count: two engines live at once, and each would size its cache from the
    # memory the other left free.
    kwargs = dict(
        dtype=dtype,
        device="cuda",
        max_model_len=256,
        enable_lora=True,
        max_loras=2,
        max_lora_rank=8,
        max_num_seqs=24,
        num_gpu_blocks_override=512,
    )
    graphs = LLM(model, **kwargs)
    assert graphs.llm_engine.model_runner.graphs is not None
    eager = LLM(model, enforce_eager=True, **kwargs)
    assert eager.llm_engine.model_runner.graphs is None
    prompts = [[0] + list(range(5, 5 + 3 * i)) for i in range(1, 20)]  # 19: a padded bucket
    loras = [
        None if i % 3 == 0 else LoRARequest(f"a{i % 2}", 1 + i % 2, str(adapters[i % 2]))
        for i in range(len(prompts))
    ]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    for batch_loras in (None, loras):
        a = [o.outputs[0].token_ids for o in graphs.generate(prompts, params, batch_loras)]
        b = [o.outputs[0].token_ids for o in eager.generate(prompts, params, batch_loras)]
        assert a == b
