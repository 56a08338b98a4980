"""Offline generation throughput of the base model beside transformers on the same weights.

Prompts of --input-len random tokens decode --output-len tokens each (greedy, no early stop) at
each batch size; tokens/s counts generated tokens. Batch 1 is also compared with the memory
roofline: every decode step reads all weights once, so the ceiling is copy bandwidth / weight
bytes tokens per second.

    python benchmarks/offline_throughput.py                 # llama3-8b preset, TP 1
    python benchmarks/offline_throughput.py --tp 1,2        # TP 1 and 2 in the same run
"""

from __future__ import annotations

import argparse

from bench_common import (
    ensure_model,
    free_cuda,
    random_prompts,
    record,
    table,
    timed,
    weight_bytes,
)


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def transformers_throughput(model_dir: str, batches: list[int], in_len: int, out_len: int):
    if not batches:
        return {}
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map=device)
    results = {}
    for batch in batches:
        ids = torch.tensor(random_prompts(batch, in_len, model.config.vocab_size), device=device)
        kwargs = dict(do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0)
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up

        def run(ids=ids, kwargs=kwargs):
            model.generate(ids, max_new_tokens=out_len, min_new_tokens=out_len, **kwargs)

        results[batch] = batch * out_len / timed(run)
        print(f"transformers batch {batch}: {results[batch]:.1f} tok/s", flush=True)
    return results


def loraplex_throughput(
    model_dir: str,
    tp: int,
    batches: list[int],
    in_len: int,
    out_len: int,
    quantization: str | None = None,
):
    from loraplex import LLM, SamplingParams

    llm = LLM(
        model_dir,
        dtype="bfloat16",
        tensor_parallel_size=tp,
        gpu_memory_utilization=0.85,
        max_num_seqs=max(batches),
        quantization=quantization,
    )
    vocab = llm.llm_engine.config.model.vocab_size
    params = SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True)
    first_token = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    llm.generate(random_prompts(2, in_len, vocab, seed=99), SamplingParams(max_tokens=4))
    results = {}
    for batch in batches:
        prompts = random_prompts(batch, in_len, vocab)
        # The whole run once untimed: compiles the kernels for its shapes, including the
        # decode attention variants that longer contexts select, before the timed run.
        llm.generate(prompts, params)
        seconds = timed(lambda prompts=prompts: llm.generate(prompts, params))
        # Decode alone: the same batch stopped after its first token (prefill) timed too.
        prefill = timed(lambda prompts=prompts: llm.generate(prompts, first_token))
        decode = batch * (out_len - 1) / max(seconds - prefill, 1e-9)
        results[batch] = (batch * out_len / seconds, decode)
        print(
            f"loraplex tp={tp} batch {batch}: {results[batch][0]:.1f} tok/s, "
            f"decode {decode:.1f} tok/s",
            flush=True,
        )
    shutdown = getattr(llm.llm_engine, "shutdown", None)
    if shutdown is not None:
        shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="/tmp/loraplex-llama3-8b")
    parser.add_argument("--preset", default="llama3-8b")
    parser.add_argument("--tp", type=ints, default=[1])
    parser.add_argument("--batches", type=ints, default=[1, 64, 256])
    parser.add_argument("--hf-batches", type=ints, default=[1, 64])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument(
        "--quantization", default="", help="'fp8' to add FP8-weight rows beside the bf16 ones"
    )
    args = parser.parse_args()

    import torch
    from kernel_timing import copy_bandwidth

    model_dir = ensure_model(args.preset, args.model)
    # Without a GPU the script still runs end to end (a smoke test), against no roofline.
    bandwidth = copy_bandwidth() if torch.cuda.is_available() else float("nan")
    roofline = bandwidth / weight_bytes(model_dir)
    hf = transformers_throughput(model_dir, args.hf_batches, args.input_len, args.output_len)
    free_cuda()
    rows = []
    variants = [None] + ([args.quantization] if args.quantization else [])
    for tp, quantization in ((tp, q) for tp in args.tp for q in variants):
        ours = loraplex_throughput(
            model_dir, tp, args.batches, args.input_len, args.output_len, quantization
        )
        free_cuda()
        for batch, (tok_s, decode) in ours.items():
            ref = hf.get(batch)
            rows.append(
                [
                    tp,
                    quantization or "bf16",
                    batch,
                    tok_s,
                    decode,
                    ref if ref else "-",
                    f"{tok_s / ref:.2f}x" if ref else "-",
                    f"{decode / (roofline * tp):.0%}" if batch == 1 else "-",
                ]
            )
    body = (
        f"{args.preset}, bf16 activations, {args.input_len} prompt + "
        f"{args.output_len} generated tokens (decode tok/s: the generated tokens after the first "
        "over the time after the prefill, i.e. 1 / TPOT x batch); "
        f"copy bandwidth {bandwidth / 1e12:.2f} TB/s, "
        f"weights {weight_bytes(model_dir) / 1e9:.2f} GB, "
        f"batch-1 roofline {roofline:.0f} tok/s per GPU\n\n"
        + table(
            [
                "TP",
                "weights",
                "batch",
                "loraplex tok/s",
                "decode tok/s",
                "transformers tok/s",
                "ratio",
                "decode % of bf16 roofline",
            ],
            rows,
        )
    )
    record("Offline throughput (base model)", body)


if __name__ == "__main__":
    main()
