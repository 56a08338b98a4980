"""The threaded step loop behind the server: streaming, aborts, bad input, a dying loop."""

import asyncio

import pytest

from loraplex import LLM, AsyncEngineArgs, AsyncLLMEngine, SamplingParams
from loraplex.engine.async_engine import EngineDeadError


@pytest.fixture(scope="module")
def model_dir(tiny_model_dirs):
    return tiny_model_dirs["llama"]


@pytest.fixture
def engine(model_dir, test_device):
    args = AsyncEngineArgs(
        model=model_dir,
        dtype="float32",
        device=test_device,
        max_model_len=256,
        disable_log_requests=True,
    )
    engine = AsyncLLMEngine.from_engine_args(args)
    yield engine
    engine.shutdown()


async def collect(engine, prompt, params, request_id):
    outputs = [out async for out in engine.generate(prompt, params, request_id)]
    return outputs


def test_concurrent_requests_stream_cumulative_outputs_equal_to_offline(
    engine, model_dir, test_device
):
    prompts = ["one two three", "a b c d e f", "hello"]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)

    async def main():
        return await asyncio.gather(
            *(collect(engine, p, params, f"r{i}") for i, p in enumerate(prompts))
        )

    streams = asyncio.run(main())
    offline = LLM(model_dir, dtype="float32", device=test_device, max_model_len=256)
    expected = offline.generate(prompts, params)
    for stream, reference in zip(streams, expected, strict=False):
        lengths = [len(out.outputs[0].token_ids) for out in stream]
        assert lengths == sorted(lengths) and lengths[-1] == 12
        assert [out.finished for out in stream] == [False] * (len(stream) - 1) + [True]
        assert stream[-1].outputs[0].token_ids == reference.outputs[0].token_ids
        assert stream[-1].outputs[0].text == reference.outputs[0].text


def test_closing_the_stream_aborts_and_frees_kv_blocks(engine):
    params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)

    async def main():
        gens = [engine.generate("count with me", params, f"c{i}") for i in range(6)]
        for gen in gens:
            await gen.__anext__()  # each request is running
        for gen in gens:
            await gen.aclose()  # the client went away
        for _ in range(200):
            stats = engine.stats()
            if stats.num_running == 0 and stats.num_waiting == 0 and stats.kv_cache_usage == 0:
                return stats
            await asyncio.sleep(0.02)
        return engine.stats()

    stats = asyncio.run(main())
    assert (stats.num_running, stats.num_waiting, stats.kv_cache_usage) == (0, 0, 0.0)
    after = asyncio.run(collect(engine, "still alive", SamplingParams(max_tokens=3), "next"))
    assert after[-1].finished


def test_bad_input_raises_at_once_and_engine_keeps_serving(engine):
    async def bad():
        async for _ in engine.generate("", SamplingParams(), "bad"):
            pass

    with pytest.raises(ValueError, match="empty"):
        asyncio.run(bad())
    out = asyncio.run(collect(engine, "fine", SamplingParams(max_tokens=2), "ok"))
    assert out[-1].finished and engine.is_healthy


def test_dead_loop_fails_waiting_requests_and_reports_unhealthy(engine):
    def broken_step():
        raise RuntimeError("device lost")

    engine.engine.step = broken_step

    async def main():
        return await collect(engine, "hello", SamplingParams(max_tokens=4), "doomed")

    with pytest.raises(EngineDeadError, match="device lost"):
        asyncio.run(main())
    assert not engine.is_healthy
    with pytest.raises(EngineDeadError):
        asyncio.run(main())


def test_adapter_calls_run_on_the_engine_thread(tiny_model_dirs, test_device, tmp_path):
    from loraplex import LoRARequest

    from .peft_adapters import make_adapters

    adapter = make_adapters(tiny_model_dirs["llama"], tmp_path, 1)[0]
    args = AsyncEngineArgs(
        model=tiny_model_dirs["llama"],
        dtype="float32",
        device=test_device,
        max_model_len=128,
        enable_lora=True,
        max_loras=2,
        max_lora_rank=8,
    )
    engine = AsyncLLMEngine.from_engine_args(args)
    try:
        request = LoRARequest("a", 3, str(adapter))

        async def main():
            assert await engine.add_lora(request) is True
            assert await engine.list_loras() == {3}
            assert await engine.pin_lora(3) is True
            with pytest.raises(ValueError, match="already used"):
                await engine.add_lora(LoRARequest("b", 3, str(tmp_path)))
            outputs = [
                o async for o in engine.generate("hi", SamplingParams(max_tokens=3), "x", request)
            ]
            assert await engine.remove_lora(3) is True
            return outputs

        outputs = asyncio.run(main())
        assert outputs[-1].finished
    finally:
        engine.shutdown()
