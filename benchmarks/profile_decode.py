"""Where one decode step's time goes: host (cProfile, top functions) and device (the forward
alone, timed with CUDA events), at a given batch size.

    python benchmarks/profile_decode.py --batch 1
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch
from bench_common import ensure_model, random_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="/tmp/loraplex-llama3-8b")
    parser.add_argument("--preset", default="llama3-8b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()

    from loraplex import LLM, SamplingParams

    llm = LLM(
        ensure_model(args.preset, args.model),
        dtype="bfloat16",
        max_model_len=2048,
        gpu_memory_utilization=0.5,
    )
    engine = llm.llm_engine
    vocab = engine.config.model.vocab_size
    params = SamplingParams(temperature=0, max_tokens=10_000, ignore_eos=True)
    for i, prompt in enumerate(random_prompts(args.batch, 128, vocab)):
        engine.add_request(str(i), prompt, params)
    for _ in range(5):  # prefill, then warm decode steps (compiles every kernel)
        engine.step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    torch.cuda.synchronize()
    step_ms = (time.perf_counter() - started) / args.steps * 1e3

    batch = engine.scheduler.schedule()  # one more decode batch, run by hand below
    runner = engine.model_runner
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host = time.perf_counter()
    model_input = runner.prepare(batch)
    prepare_ms = (time.perf_counter() - host) * 1e3
    from loraplex.engine.context import forward_context

    with torch.inference_mode(), forward_context(model_input.context):
        start.record()
        host = time.perf_counter()
        hidden = runner.model(model_input.input_ids, model_input.positions)
        launch_ms = (time.perf_counter() - host) * 1e3
        end.record()
        end.synchronize()
    forward_ms = start.elapsed_time(end)
    del hidden

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(10):
        engine.step()
    torch.cuda.synchronize()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    print(text.getvalue())
    print(
        f"batch {args.batch}: step {step_ms:.2f} ms, prepare {prepare_ms:.2f} ms, "
        f"forward launch (host) {launch_ms:.2f} ms, forward on device {forward_ms:.2f} ms"
    )


if __name__ == "__main__":
    main()
