"""Async scheduling: step n+1 is launched before the host reads step n's tokens (they reach
its input on the device). Everything a caller sees must equal the synchronous engine's:
tokens, logprobs, text, finish reasons, for every kind of request, with stops that land while
a step is in flight, aborts, preemption, penalties (which wait for the host) and adapters."""

from __future__ import annotations

import pytest

from loraplex import LLM, SamplingParams

from .peft_adapters import make_adapters
from .test_lora_parity import requests_for

PROMPTS = [
    "The cat sat on",
    "Numbers: 1 2 3",
    "def main():",
    "Hello, world",
    "A",
    "Once upon a time there was a little girl who lived in a village near the forest and",
]

PARAMS = [
    SamplingParams(temperature=0, max_tokens=17),
    SamplingParams(temperature=1.0, seed=5, max_tokens=9, logprobs=3),
    SamplingParams(temperature=0.8, top_p=0.9, seed=1, n=2, max_tokens=12, stop=[" the", "e"]),
    SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[7, 11, 13, 17, 19, 23]),
    SamplingParams(temperature=1.0, seed=9, max_tokens=1),
    SamplingParams(temperature=0.7, seed=2, max_tokens=25, repetition_penalty=1.3, min_tokens=4),
]


def summary(outputs):
    """What must be identical: tokens, text and how each completion ended."""
    return [
        [(c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in o.outputs] for o in outputs
    ]


def assert_same_logprobs(got, want):
    """Equal up to float32 rounding: a stopped sequence's discarded step changes the batch
    shapes of later steps, and with them the order of the matmul sums."""
    for a, b in zip(got, want, strict=True):
        for x, y in zip(a.outputs, b.outputs, strict=True):
            assert x.cumulative_logprob == pytest.approx(y.cumulative_logprob, rel=1e-5)
            if y.logprobs is None:
                assert x.logprobs is None
                continue
            for step_x, step_y in zip(x.logprobs, y.logprobs, strict=True):
                assert step_x.keys() == step_y.keys()
                assert list(step_x.values()) == pytest.approx(list(step_y.values()), abs=1e-4)


def make_llm(model_dir, device, async_scheduling, **kwargs):
    return LLM(
        model_dir,
        dtype="float32",
        device=device,
        max_model_len=256,
        async_scheduling=async_scheduling,
        **kwargs,
    )


@pytest.fixture(scope="module")
def engines(tiny_model_dirs, test_device):
    model_dir = tiny_model_dirs["llama"]
    return make_llm(model_dir, test_device, True), make_llm(model_dir, test_device, False)


def test_every_kind_of_request_matches_the_synchronous_engine(engines):
    overlapped, synchronous = engines
    assert overlapped.llm_engine.config.scheduler.async_scheduling
    got = overlapped.generate(PROMPTS, PARAMS)
    want = synchronous.generate(PROMPTS, PARAMS)
    assert summary(got) == summary(want)
    assert_same_logprobs(got, want)
    want = summary(want)
    # The stop conditions really ended requests early, one step after being launched.
    reasons = {c[2] for row in want for c in row}
    assert reasons == {"stop", "length"}


def test_a_step_is_in_flight_between_calls(engines):
    overlapped, _ = engines
    engine = overlapped.llm_engine
    engine.add_request("inflight", PROMPTS[0], SamplingParams(temperature=0, max_tokens=5))
    assert engine.step() == []  # the prompt is launched; its token is not read yet
    assert engine._in_flight is not None
    seq = engine.requests["inflight"].seqs[0]
    assert seq.num_pending == 1 and seq.output_token_ids == []
    outputs = engine.step()  # launches the next token, then reads the first
    assert [len(o.outputs[0].token_ids) for o in outputs] == [1]
    while engine.has_unfinished_requests():
        outputs = engine.step()
    assert len(outputs[0].outputs[0].token_ids) == 5 and outputs[0].finished
    # The step launched before the stop was seen is still in flight; reading it changes
    # nothing that was returned (its token is discarded).
    assert seq.num_pending == 1
    assert engine.flush() == [] and seq.num_pending == 0
    assert len(seq.output_token_ids) == 5


def test_abort_while_a_step_is_in_flight(engines):
    overlapped, _ = engines
    engine = overlapped.llm_engine
    params = SamplingParams(temperature=0, max_tokens=50, ignore_eos=True)
    engine.add_request("a", PROMPTS[1], params)
    engine.add_request("b", PROMPTS[2], params)
    for _ in range(4):
        engine.step()
    engine.abort_request("a")
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    assert {o.request_id for o in outputs} == {"b"}
    assert len(outputs[-1].outputs[0].token_ids) == 50
    free = engine.block_manager.num_free_blocks
    assert free == engine.block_manager.num_blocks  # every block came back


def test_preemption_with_tokens_in_flight(tiny_model_dirs, test_device):
    model_dir = tiny_model_dirs["llama"]
    kwargs = {"num_gpu_blocks_override": 20, "max_num_batched_tokens": 64}
    prompts = [PROMPTS[5]] * 3 + PROMPTS[:4]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    overlapped = make_llm(model_dir, test_device, True, **kwargs)
    got = overlapped.generate(prompts, params)
    assert overlapped.llm_engine.scheduler.num_preemptions > 0
    want = make_llm(model_dir, test_device, False, **kwargs).generate(prompts, params)
    assert summary(got) == summary(want)
    assert_same_logprobs(got, want)


def test_mixed_adapters_match_the_synchronous_engine(tiny_model_dirs, test_device, tmp_path):
    model_dir = tiny_model_dirs["llama"]
    adapters = make_adapters(model_dir, tmp_path, count=3)
    loras = requests_for(adapters, [0, 1, 2, 3, 1, 0], 3)  # 3 = the base model
    params = SamplingParams(temperature=0, max_tokens=12)
    outputs = []
    for async_scheduling in (True, False):
        llm = make_llm(model_dir, test_device, async_scheduling, enable_lora=True, max_loras=2)
        outputs.append(summary(llm.generate(PROMPTS, params, loras)))
    assert outputs[0] == outputs[1]


def _seq(seq_id, prompt, computed, blocks):
    from loraplex.engine.sequence import Request, Sequence

    request = Request(str(seq_id), None, prompt, SamplingParams())
    seq = Sequence(seq_id, request, 0, request.params, None, None)
    seq.num_computed_tokens = computed
    seq.block_table = list(blocks)
    return seq


def test_prepare_takes_pending_ids_from_the_device_and_chunks_from_the_host(engines):
    import torch

    from loraplex.engine.scheduler import ScheduledBatch

    runner = engines[1].llm_engine.model_runner
    chunk = _seq(1, [5, 6, 7, 8, 9], computed=2, blocks=[3])  # a one-token prompt chunk
    decode = _seq(2, [1, 2, 3], computed=2, blocks=[4])  # its last token
    pending = _seq(3, [1, 2, 3], computed=3, blocks=[5])  # its next token is still on the device
    pending.num_pending, pending.pending_row = 1, 2
    sampled = torch.tensor([100, 101, 102, 103])
    batch = ScheduledBatch(seqs=[chunk, decode, pending], num_new_tokens=[1, 1, 1])
    model_input = runner.prepare(batch, pending_tokens=sampled)
    assert model_input.input_ids.tolist() == [7, 3, 102]
    assert model_input.positions.tolist() == [2, 2, 3]
    assert model_input.logits_indices.tolist() == [1, 2]  # the chunk does not sample yet
    block = runner.block_size
    assert model_input.context.slot_mapping.tolist() == [
        3 * block + 2,
        4 * block + 2,
        5 * block + 3,
    ]
    with pytest.raises(RuntimeError, match="waits for a sampled token"):
        runner.prepare(batch)


def test_a_failed_launch_keeps_the_step_in_flight(engines, monkeypatch):
    overlapped, synchronous = engines
    params = SamplingParams(temperature=0, max_tokens=6)
    [want] = synchronous.generate(PROMPTS[0], params)
    engine = overlapped.llm_engine
    engine.add_request("retry", PROMPTS[0], params)
    engine.step()  # the prompt: its first token is in flight
    execute = engine.executor.execute

    def fail(*args, **kwargs):
        raise RuntimeError("launch failed")

    monkeypatch.setattr(engine.executor, "execute", fail)
    with pytest.raises(RuntimeError, match="launch failed"):
        engine.step()
    monkeypatch.setattr(engine.executor, "execute", execute)
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    assert outputs[-1].outputs[0].token_ids == want.outputs[0].token_ids


def test_penalties_and_min_tokens_read_the_token_still_on_the_device(engines):
    """A penalized request keeps overlapping: its newest token, not yet on the host, is
    counted by the penalties and by min_tokens on the device."""
    overlapped, synchronous = engines
    params = SamplingParams(
        temperature=0,
        max_tokens=24,
        repetition_penalty=1.8,
        frequency_penalty=0.7,
        presence_penalty=0.4,
        min_tokens=20,
        stop_token_ids=list(range(0, 2048, 3)),  # stops early unless min_tokens holds it back
    )
    engine = overlapped.llm_engine
    engine.add_request("penalized", PROMPTS[2], params)
    engine.step()
    engine.step()
    seq = engine.requests["penalized"].seqs[0]
    assert engine._in_flight is not None and seq.num_pending == 1
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    [want] = synchronous.generate(PROMPTS[2], params)
    assert outputs[-1].outputs[0].token_ids == want.outputs[0].token_ids
    assert len(want.outputs[0].token_ids) >= 20


def test_flush_reads_the_step_in_flight(engines):
    overlapped, _ = engines
    engine = overlapped.llm_engine
    engine.add_request("flush", PROMPTS[1], SamplingParams(temperature=0, max_tokens=4))
    engine.step()
    seq = engine.requests["flush"].seqs[0]
    assert seq.num_pending == 1
    [output] = engine.flush()
    assert seq.num_pending == 0 and len(output.outputs[0].token_ids) == 1
    assert engine.flush() == []
    while engine.has_unfinished_requests():
        engine.step()
