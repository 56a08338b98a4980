"""Where one decode step's time goes, at a given batch size.

Prints (1) the wall time of a normal engine step, (2) the same step cut into its phases with a
device sync after each (schedule, prepare, forward by graph replay or eagerly, logits, sampling,
bookkeeping), (3) the forward's device time by CUDA events, graph replay beside eager, and
(4) the eager forward's kernels by total device time (torch.profiler), so host and device costs
can be told apart.

    python benchmarks/profile_decode.py --batch 1
    python benchmarks/profile_decode.py --batch 64 --quantization fp8
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_common import ensure_model, random_prompts, table


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed_phases(engine, steps: int) -> dict[str, float]:
    """Mean ms per phase of `steps` decode steps, synchronizing after each phase."""
    from loraplex.engine.sampling_batch import SamplingBatch

    runner = engine.model_runner
    engine.flush()  # the phases below run one synchronous step at a time
    totals: dict[str, float] = {}

    def phase(name, fn):
        started = time.perf_counter()
        result = fn()
        _sync()
        totals[name] = totals.get(name, 0.0) + (time.perf_counter() - started) * 1e3
        return result

    for _ in range(steps):
        batch = phase("schedule", engine.scheduler.schedule)
        model_input = phase("prepare", lambda batch=batch: runner.prepare(batch))
        logits = phase("forward + logits", lambda mi=model_input: runner.run(mi))
        seqs = list(batch.seqs)
        for seq, num_new in zip(seqs, batch.num_new_tokens, strict=True):
            seq.num_computed_tokens += num_new
        sampling_batch = SamplingBatch(
            params=[s.params for s in seqs],
            prompt_token_ids=[s.request.prompt_token_ids for s in seqs],
            output_token_ids=[s.output_token_ids for s in seqs],
            generators=[s.generator for s in seqs],
        )
        result = phase("sample", lambda sb=sampling_batch, lg=logits: engine.sampler(lg, sb))

        def advance(seqs=seqs, result=result):
            for row, seq in enumerate(seqs):
                engine._advance(
                    seq, result.token_ids[row], result.logprobs[row], result.top_logprobs[row]
                )
            return [engine._output(seq.request) for seq in seqs]

        phase("advance + outputs", advance)
    return {name: total / steps for name, total in totals.items()}


def _device_ms(fn, reps: int = 20) -> float:
    if not torch.cuda.is_available():  # a CPU dry run: wall time
        fn()
        started = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - started) / reps * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    _sync()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def _activity():
    kinds = torch.profiler.ProfilerActivity
    return kinds.CUDA if torch.cuda.is_available() else kinds.CPU


def _kernel_table(fn, limit: int) -> tuple[list[list], int, float]:
    """(rows of kernel name, launches, ms, share; total launches; total us) of one call."""
    with torch.profiler.profile(activities=[_activity()]) as prof:
        fn()
        _sync()
    kernels = sorted(
        (e for e in prof.key_averages() if e.device_time_total > 0),
        key=lambda e: e.device_time_total,
        reverse=True,
    )
    total_us = sum(e.device_time_total for e in kernels)
    rows = [
        [e.key[:60], e.count, e.device_time_total / 1e3, f"{e.device_time_total / total_us:.0%}"]
        for e in kernels[:limit]
    ]
    return rows, sum(e.count for e in kernels), total_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="/tmp/loraplex-llama3-8b")
    parser.add_argument("--preset", default="llama3-8b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--quantization", default=None)
    parser.add_argument("--kernels", type=int, default=25, help="rows of the kernel table")
    args = parser.parse_args()

    from loraplex import LLM, SamplingParams
    from loraplex.engine.context import forward_context

    llm = LLM(
        ensure_model(args.preset, args.model),
        dtype="bfloat16",
        max_model_len=2048,
        gpu_memory_utilization=0.6,
        max_num_seqs=max(args.batch, 8),
        quantization=args.quantization,
    )
    engine = llm.llm_engine
    vocab = engine.config.model.vocab_size
    params = SamplingParams(temperature=0, max_tokens=10_000, ignore_eos=True)
    for i, prompt in enumerate(random_prompts(args.batch, 128, vocab)):
        engine.add_request(str(i), prompt, params)
    for _ in range(5):  # prefill, then warm decode steps
        engine.step()
    _sync()
    started = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    _sync()
    step_ms = (time.perf_counter() - started) / args.steps * 1e3

    phases = _timed_phases(engine, args.steps)

    runner = engine.model_runner
    batch = engine.scheduler.schedule()
    model_input = runner.prepare(batch)
    ctx = model_input.context

    def eager():
        with torch.inference_mode(), forward_context(ctx):
            return runner.model(model_input.input_ids, model_input.positions)

    eager_ms = _device_ms(eager)
    host = time.perf_counter()
    eager()
    launch_ms = (time.perf_counter() - host) * 1e3
    _sync()
    graph_ms = float("nan")
    if getattr(runner, "graphs", None) is not None and runner.graphs.can_run(
        ctx, model_input.input_ids.shape[0]
    ):

        def replay():
            return runner.graphs.run(model_input.input_ids, model_input.positions, ctx)

        graph_ms = _device_ms(replay)
    hidden = eager()
    logits_ms = _device_ms(lambda: runner.model.compute_logits(hidden[model_input.logits_indices]))

    kernel_rows, num_launches, total_us = _kernel_table(eager, args.kernels)
    print(table(["kernel (eager forward)", "launches", "ms", "share"], kernel_rows))
    print(f"\n{num_launches} kernel launches, {total_us / 1e3:.2f} ms of kernels per forward\n")
    if graph_ms == graph_ms:  # a graph ran: its kernels, timed inside the replay
        kernel_rows, num_launches, total_us = _kernel_table(replay, args.kernels)
        print(table(["kernel (graph replay)", "launches", "ms", "share"], kernel_rows))
        print(f"\n{num_launches} kernels, {total_us / 1e3:.2f} ms of kernels per replay\n")
    rows = [[name, ms] for name, ms in phases.items()]
    rows.append(["sum of phases", sum(phases.values())])
    rows.append(["engine.step (no syncs)", step_ms])
    print(table([f"phase (batch {args.batch}, {args.quantization or 'bf16'})", "ms"], rows))
    print(
        "\n"
        + table(
            ["forward", "ms"],
            [
                ["graph replay (device)", graph_ms],
                ["eager (device)", eager_ms],
                ["eager launch (host)", launch_ms],
                ["compute_logits (device)", logits_ms],
            ],
        )
    )


if __name__ == "__main__":
    main()
