"""Tensor parallelism: worker processes joined over gloo (on CPU) or NCCL (with
LORAPLEX_TEST_DEVICE=cuda) give the same greedy tokens as one process and as transformers / peft,
with and without mixed LoRA adapters; a dead worker fails the engine at once and no process
outlives it."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import signal
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from loraplex import LLM, AsyncEngineArgs, AsyncLLMEngine, LoRARequest, SamplingParams
from loraplex.config import check_tensor_parallel
from loraplex.engine.args import EngineArgs
from loraplex.engine.async_engine import EngineDeadError
from loraplex.engine.context import ForwardContext
from loraplex.engine.layers.lora import ModuleStack
from loraplex.engine.model_runner import ModelInput
from loraplex.engine.parallel import TensorParallelError, workers
from loraplex.engine.parallel.messages import (
    decode_header,
    encode_header,
    lora_payload_size,
    pack_lora_slot,
    pack_step,
    step_payload_size,
    unpack_lora_slot,
    unpack_step,
)
from loraplex.kernels.lora_meta import LoRAKernelMeta

from .peft_adapters import make_adapters, peft_greedy

MAX_TOKENS = 16
# One prompt crosses mistral's 64-token sliding window.
PROMPT_LENGTHS = [1, 5, 21, 40, 70, 90]


def needs_gpus(device: str, count: int) -> None:
    if device.startswith("cuda") and torch.cuda.device_count() < count:
        pytest.skip(f"needs {count} GPUs")


def make_llm(model_dir: str, device: str, tp: int, **kwargs) -> LLM:
    kwargs.setdefault("max_model_len", 256)
    return LLM(model_dir, dtype="float32", device=device, tensor_parallel_size=tp, **kwargs)


def greedy(llm: LLM, prompts, loras=None) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params, loras)]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def random_prompts(lengths: list[int], seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(4, 2000) for _ in range(n - 1)] for n in lengths]


# ---- validation (no processes) ------------------------------------------------------------


def test_heads_not_divisible_by_ranks_is_refused(tiny_model_dirs):
    args = EngineArgs(model=tiny_model_dirs["llama"], device="cpu", tensor_parallel_size=3)
    with pytest.raises(ValueError, match="num_attention_heads=4 is not divisible by"):
        args.create_engine_config()


@pytest.mark.parametrize(
    "shape, size, message",
    [
        ((8, 3, 64), 2, "num_key_value_heads=3"),  # neither split nor replicated evenly
        ((8, 8, 100), 8, "intermediate_size=100"),
    ],
)
def test_uneven_shapes_are_refused(shape, size, message):
    heads, kv_heads, intermediate = shape
    cfg = SimpleNamespace(
        num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate
    )
    with pytest.raises(ValueError, match=message):
        check_tensor_parallel(cfg, size, torch.device("cpu"))


def test_more_ranks_than_gpus_names_both_numbers(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = SimpleNamespace(num_attention_heads=4, num_key_value_heads=2, intermediate_size=256)
    with pytest.raises(ValueError, match="tensor_parallel_size=2 needs 2 GPUs.*only 1 GPUs"):
        check_tensor_parallel(cfg, 2, torch.device("cuda"))
    check_tensor_parallel(cfg, 1, torch.device("cuda"))  # one rank needs no check


# ---- messages (no processes) --------------------------------------------------------------


def i32(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def i64(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


@pytest.mark.parametrize("with_lora", [False, True])
def test_step_message_rebuilds_the_model_input(with_lora):
    ctx = ForwardContext(
        slot_mapping=i64(48, 49, 50, 81, 82),
        block_tables=i32(3, 4, 5, 0).view(2, 2),
        context_lens=i32(3, 18),
        cu_seqlens_q=i32(0, 3, 5),
        max_query_len=3,
        max_context_len=18,
    )
    if with_lora:
        ctx.lora = LoRAKernelMeta.build(i32(1, 1, 1, -1, 0), 2, prefill=True)
    sent = ModelInput(
        input_ids=i64(1, 7, 9, 11, 13),
        positions=i64(0, 1, 2, 16, 17),
        context=ctx,
        logits_indices=i64(2, 4),
    )
    header, payload = pack_step(sent)
    header = decode_header(encode_header(header))
    assert payload.dtype == torch.int64 and payload.numel() == step_payload_size(header)
    got = unpack_step(header, payload.clone(), max_loras=2)
    for name in ("input_ids", "positions", "logits_indices"):
        assert torch.equal(getattr(got, name), getattr(sent, name))
    for name in ("slot_mapping", "block_tables", "context_lens", "cu_seqlens_q"):
        theirs, ours = getattr(got.context, name), getattr(ctx, name)
        assert theirs.dtype == ours.dtype and torch.equal(theirs, ours)
    assert (got.context.max_query_len, got.context.max_context_len) == (3, 18)
    if not with_lora:
        assert got.context.lora is None
        return
    for name in ("token_lora", "sorted_token_ids", "segment_starts", "segment_slots"):
        assert torch.equal(getattr(got.context.lora, name), getattr(ctx.lora, name))
    assert got.context.lora.prefill


def test_lora_slot_message_carries_every_tensor_bit_for_bit():
    generator = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(torch.bfloat16)

    weights = [
        ModuleStack("q_proj", (0,), rand(1, 4, 128), rand(1, 128, 4)),
        ModuleStack("down_proj", (1, 3), rand(2, 8, 256), rand(2, 128, 8)),
        ModuleStack("v_proj", (0, 1, 2), rand(3, 8, 128), rand(3, 64, 8)),
    ]
    header, payload = pack_lora_slot(3, weights, torch.device("cpu"))
    header = decode_header(encode_header(header))
    assert payload.dtype == torch.uint8 and payload.numel() == lora_payload_size(header)
    slot, got = unpack_lora_slot(header, payload.clone(), torch.bfloat16)
    assert slot == 3 and [(s.module, s.layers) for s in got] == [
        (s.module, s.layers) for s in weights
    ]
    for sent, received in zip(weights, got, strict=True):
        assert torch.equal(received.a, sent.a) and torch.equal(received.b, sent.b)


def test_lora_slot_message_sends_a_packed_adapter_without_copying():
    """A loaded adapter's stacks lie back to back in one buffer: that buffer is the payload."""
    buffer = torch.arange(2 * 4 * 16 + 2 * 16 * 4 + 8 * 16 + 8 * 4, dtype=torch.float32)
    a0, b0, a1, b1 = buffer.split([2 * 4 * 16, 2 * 16 * 4, 8 * 16, 8 * 4])
    weights = [
        ModuleStack("q_proj", (0, 1), a0.view(2, 4, 16), b0.view(2, 16, 4)),
        ModuleStack("o_proj", (1,), a1.view(1, 8, 16), b1.view(1, 4, 8)),
    ]
    header, payload = pack_lora_slot(0, weights, torch.device("cpu"))
    assert payload.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()
    _, got = unpack_lora_slot(header, payload.clone(), torch.float32)
    for sent, received in zip(weights, got, strict=True):
        assert torch.equal(received.a, sent.a) and torch.equal(received.b, sent.b)


# ---- parity -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_tp2_greedy_matches_tp1_and_transformers(arch, tiny_model_dirs, test_device):
    from transformers import AutoModelForCausalLM

    needs_gpus(test_device, 2)
    model_dir = tiny_model_dirs[arch]
    prompts = random_prompts(PROMPT_LENGTHS, seed=len(arch))
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    expected = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        out = hf.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=MAX_TOKENS
        )
        expected.append(out[0, len(prompt) :].tolist())
    single = greedy(make_llm(model_dir, test_device, 1), prompts)
    # A small cache and short chunks: the sharded engine also preempts and chunks prefills.
    llm = make_llm(
        model_dir,
        test_device,
        2,
        max_model_len=128,
        num_gpu_blocks_override=10,
        max_num_batched_tokens=32,
    )
    try:
        attention = llm.llm_engine.model_runner.model.model.layers[0].self_attn
        assert (attention.num_heads, attention.num_kv_heads) == (2, 1)  # this rank's half
        assert greedy(llm, prompts) == single == expected
        assert llm.llm_engine.scheduler.num_preemptions > 0
        assert llm.llm_engine.block_manager.num_free_blocks == 10
    finally:
        llm.llm_engine.shutdown()


@pytest.fixture(scope="module")
def lora_case(tiny_model_dirs, tmp_path_factory):
    """(model dir, adapters, prompts, adapter index per prompt (-1: base), peft's tokens)."""
    model_dir = tiny_model_dirs["llama"]
    adapters = make_adapters(model_dir, tmp_path_factory.mktemp("tp-adapters"), 8)
    rng = random.Random(11)
    prompts = random_prompts([rng.randrange(3, 50) for _ in range(18)], seed=5)
    choice = [(i % 9) - 1 for i in range(len(prompts))]
    expected: list[list[int] | None] = [None] * len(prompts)
    for adapter_index in range(-1, 8):
        rows = [i for i, c in enumerate(choice) if c == adapter_index]
        path = None if adapter_index < 0 else adapters[adapter_index]
        tokens = peft_greedy(model_dir, path, [prompts[r] for r in rows], MAX_TOKENS)
        for row, row_tokens in zip(rows, tokens, strict=True):
            expected[row] = row_tokens
    return model_dir, adapters, prompts, choice, expected


def lora_requests(adapters, choice):
    return [None if c < 0 else LoRARequest(f"a{c}", c + 1, str(adapters[c])) for c in choice]


def test_tp2_mixed_loras_with_evictions_match_peft_and_tp1(lora_case, test_device):
    needs_gpus(test_device, 2)
    model_dir, adapters, prompts, choice, expected = lora_case
    loras = lora_requests(adapters, choice)
    # Two slots for eight adapters: slots are reloaded (and broadcast) many times.
    options = dict(enable_lora=True, max_loras=2, max_cpu_loras=3, max_lora_rank=16)
    single = greedy(make_llm(model_dir, test_device, 1, **options), prompts, loras)
    llm = make_llm(model_dir, test_device, 2, **options)
    try:
        assert greedy(llm, prompts, loras) == single == expected
        assert llm.llm_engine.lora_manager.num_evictions > 0
    finally:
        llm.llm_engine.shutdown()


def test_tp4_replicates_kv_heads_and_matches_peft(lora_case, test_device):
    needs_gpus(test_device, 4)
    model_dir, adapters, prompts, choice, expected = lora_case
    rows = list(range(0, len(prompts), 2))  # every adapter and the base model once
    llm = make_llm(model_dir, test_device, 4, enable_lora=True, max_loras=8, max_lora_rank=16)
    try:
        attention = llm.llm_engine.model_runner.model.model.layers[0].self_attn
        assert (attention.num_heads, attention.num_kv_heads) == (1, 1)  # 2 KV heads, 4 ranks
        loras = lora_requests(adapters, [choice[i] for i in rows])
        assert greedy(llm, [prompts[i] for i in rows], loras) == [expected[i] for i in rows]
    finally:
        llm.llm_engine.shutdown()


# ---- life cycle ---------------------------------------------------------------------------


def test_killed_worker_fails_generate_within_seconds_and_leaves_no_process(
    tiny_model_dirs, test_device
):
    needs_gpus(test_device, 2)
    llm = make_llm(tiny_model_dirs["llama"], test_device, 2, max_model_len=2048)
    engine = llm.llm_engine
    pids = engine.executor.workers.pids
    killed_at: list[float] = []

    def kill() -> None:
        killed_at.append(time.monotonic())
        os.kill(pids[0], signal.SIGKILL)

    timer = threading.Timer(0.5, kill)
    timer.start()
    params = SamplingParams(temperature=0, max_tokens=2000, ignore_eos=True)
    try:
        with pytest.raises(TensorParallelError, match=rf"rank 1 \(pid {pids[0]}\).*code -9"):
            llm.generate(random_prompts([8, 9, 10, 11], seed=3), params)
    finally:
        timer.cancel()
    assert killed_at, "generation ended before the worker was killed"
    assert time.monotonic() - killed_at[0] < 10
    assert all(gone(pid) for pid in pids)
    assert not torch.distributed.is_initialized()
    with pytest.raises(TensorParallelError, match="rank 1"):  # dead for good, fails at once
        llm.generate([1, 2, 3], SamplingParams(max_tokens=2))


def test_dropped_engine_stops_its_workers(tiny_model_dirs, test_device):
    needs_gpus(test_device, 2)
    threads = torch.get_num_threads()
    llm = make_llm(tiny_model_dirs["qwen2"], test_device, 2)
    pids = llm.llm_engine.executor.workers.pids
    assert not any(gone(pid) for pid in pids)
    del llm
    gc.collect()
    assert all(gone(pid) for pid in pids)
    assert not torch.distributed.is_initialized()
    assert torch.get_num_threads() == threads  # the driver's CPU threads are given back


def test_async_engine_with_tp2_streams_and_dies_cleanly(tiny_model_dirs, test_device):
    needs_gpus(test_device, 2)
    model_dir = tiny_model_dirs["llama"]
    prompts = random_prompts([6, 30], seed=9)
    expected = greedy(make_llm(model_dir, test_device, 1), prompts)
    args = AsyncEngineArgs(
        model=model_dir,
        dtype="float32",
        device=test_device,
        max_model_len=256,
        tensor_parallel_size=2,
        disable_log_requests=True,
    )
    engine = AsyncLLMEngine.from_engine_args(args)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)

    async def final(prompt, request_id):
        outputs = [out async for out in engine.generate(prompt, params, request_id)]
        return outputs[-1].outputs[0].token_ids

    async def both():
        return await asyncio.gather(*(final(p, f"r{i}") for i, p in enumerate(prompts)))

    try:
        assert asyncio.run(both()) == expected
        pids = engine.engine.executor.workers.pids
        os.kill(pids[0], signal.SIGKILL)
        with pytest.raises((TensorParallelError, EngineDeadError)):
            asyncio.run(final(prompts[0], "after-kill"))
        assert not engine.is_healthy
        assert all(gone(pid) for pid in pids)
        assert not torch.distributed.is_initialized()
    finally:
        engine.shutdown()
        engine.engine.shutdown()


@pytest.mark.gpu
def test_tp2_with_symmetric_memory_all_reduce_matches_tp1(tiny_model_dirs, monkeypatch):
    """The opt-in all-reduce through symmetric memory gives the same greedy tokens as one
    GPU (and is really in use on the driver)."""
    from loraplex.engine import distributed

    needs_gpus("cuda", 2)
    model_dir = tiny_model_dirs["llama"]
    prompts = random_prompts(PROMPT_LENGTHS, seed=3)
    single = greedy(make_llm(model_dir, "cuda", 1), prompts)
    monkeypatch.setenv(distributed.FAST_ALL_REDUCE_ENV, "symm_mem")
    llm = make_llm(model_dir, "cuda", 2)
    try:
        assert distributed.fast_all_reduce_active()
        assert greedy(llm, prompts) == single
    finally:
        llm.llm_engine.shutdown()


def test_fast_all_reduce_stays_off_without_a_gpu_group(monkeypatch):
    from loraplex.engine import distributed

    monkeypatch.setenv(distributed.FAST_ALL_REDUCE_ENV, "symm_mem")
    assert not distributed.setup_fast_all_reduce(torch.device("cpu"))
    assert not distributed.fast_all_reduce_active()


# ---- leaving the group --------------------------------------------------------------------


class _FakeWorker:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.alive = True

    def join(self, timeout=None) -> None:
        self.events.append("join worker")
        self.alive = False

    def is_alive(self) -> bool:
        return self.alive

    def kill(self) -> None:
        self.events.append("kill worker")


class _FakePipe:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def send_bytes(self, message: bytes) -> None:
        self.events.append(f"send {workers.Command(decode_header(message)[0]).name}")

    def close(self) -> None:
        pass


def _fake_group(events: list[str]) -> workers._GroupState:
    state = workers._GroupState(abort_group=True)
    state.processes, state.pipes = [_FakeWorker(events)], [_FakePipe(events)]
    state.joined = True
    return state


def test_shutdown_leaves_the_group_together_with_the_workers(monkeypatch):
    """A worker leaves the group as soon as it reads SHUTDOWN, and NCCL's destroy waits for
    every rank: the driver must leave before waiting for the workers to exit, or both wait
    (and once the driver kills the worker, its own destroy never returns)."""
    events: list[str] = []
    monkeypatch.setattr(
        torch.distributed, "destroy_process_group", lambda: events.append("driver leaves")
    )
    workers._shutdown(_fake_group(events))
    assert events[:3] == ["send SHUTDOWN", "driver leaves", "join worker"]
    assert "kill worker" not in events


def test_leaving_a_group_whose_peer_is_gone_gives_up(monkeypatch, caplog):
    """NCCL's destroy never returns once a peer is gone: leaving returns anyway (an unbounded
    wait would hang here) and says the group was left behind."""
    never = threading.Event()
    monkeypatch.setattr(torch.distributed, "destroy_process_group", never.wait)
    state = _fake_group([])
    workers._leave_group(state, timeout_s=0.2)
    assert "left it behind" in caplog.text
    assert not state.joined
    never.set()
