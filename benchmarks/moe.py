"""Mixture-of-experts serving: the mixtral-8x7b preset decoding beside transformers, its batch-1
memory roofline, FP8 experts, tensor parallelism, and the fused MoE kernel of one layer.

Prompts of --input-len random tokens decode --output-len tokens each (greedy, no early stop);
tokens/s counts generated tokens. A batch-1 decode step reads the attention weights, the router
and LM head, and only the top-k experts each layer selects; the roofline is the copy bandwidth
over those bytes. The kernel rows time one layer's `fused_moe` (CUDA graph, median) and compare
its bytes (the distinct experts the batch selects) with the copy bandwidth.

    python benchmarks/moe.py                       # TP 1, bf16 and fp8, beside transformers
    python benchmarks/moe.py --tp 2 --no-hf        # on the two-GPU machine

The bf16 checkpoint is about 94 GB: the folder (--model) needs that much free disk.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_common import ensure_model, free_cuda, random_prompts, record, table, timed


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def decode_bytes_per_token(cfg: dict, weight_bytes: int) -> int:
    """Weight bytes a batch-1 decode step reads: attention (`weight_bytes` per weight, 1 for
    fp8), the top-k experts of every layer (likewise), and in bf16 the router, norms and LM
    head."""
    hidden, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * head_dim
    kv = cfg["num_key_value_heads"] * head_dim
    attention = hidden * (q + 2 * kv) + q * hidden
    experts = cfg["num_experts_per_tok"] * 3 * cfg["intermediate_size"] * hidden
    bf16 = cfg["num_local_experts"] * hidden + 2 * hidden
    per_layer = (attention + experts) * weight_bytes + bf16 * 2
    return layers * per_layer + (cfg["vocab_size"] * hidden + hidden) * 2


def transformers_throughput(model_dir: str, batches: list[int], in_len: int, out_len: int):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cuda")
    results = {}
    for batch in batches:
        ids = torch.tensor(random_prompts(batch, in_len, model.config.vocab_size), device="cuda")
        kwargs = dict(do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0)
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up

        def run(ids=ids, kwargs=kwargs):
            model.generate(ids, max_new_tokens=out_len, min_new_tokens=out_len, **kwargs)

        results[batch] = batch * out_len / timed(run)
        print(f"transformers batch {batch}: {results[batch]:.1f} tok/s", flush=True)
    return results


def loraplex_throughput(
    model_dir: str, tp: int, batches: list[int], in_len: int, out_len: int, fp8: bool
) -> dict[int, float]:
    from loraplex import LLM, SamplingParams

    llm = LLM(
        model_dir,
        dtype="bfloat16",
        tensor_parallel_size=tp,
        gpu_memory_utilization=0.92,
        max_num_seqs=max(batches),
        max_model_len=in_len + out_len + 16,
        quantization="fp8" if fp8 else None,
    )
    vocab = llm.llm_engine.config.model.vocab_size
    params = SamplingParams(temperature=0, max_tokens=out_len, ignore_eos=True)
    results = {}
    for batch in batches:
        prompts = random_prompts(batch, in_len, vocab)
        # The whole run once untimed: compiles the kernels for its shapes, including the
        # decode attention variants that longer contexts select, before the timed run.
        llm.generate(prompts, params)
        results[batch] = (
            batch * out_len / timed(lambda prompts=prompts: llm.generate(prompts, params))
        )
        label = "fp8" if fp8 else "bf16"
        print(f"loraplex {label} tp={tp} batch {batch}: {results[batch]:.1f} tok/s", flush=True)
    llm.llm_engine.shutdown()
    return results


def kernel_rows(cfg: dict, bandwidth: float) -> list[list[object]]:
    """One Mixtral layer's fused MoE at decode and prefill-chunk sizes, bf16 and fp8 experts."""
    from kernel_timing import fill_random_, time_per_call

    from loraplex.kernels import fused_moe
    from loraplex.kernels.reference import FP8_DTYPE

    experts, hidden, inter = cfg["num_local_experts"], cfg["hidden_size"], cfg["intermediate_size"]
    top_k = cfg["num_experts_per_tok"]
    rows = []
    for name, dtype in (("bf16", torch.bfloat16), ("fp8", FP8_DTYPE)):
        w13 = fill_random_(torch.empty(experts, 2 * inter, hidden, dtype=dtype, device="cuda"))
        w2 = fill_random_(torch.empty(experts, hidden, inter, dtype=dtype, device="cuda"))
        scales = {}
        if dtype == FP8_DTYPE:
            scales = {
                "w13_scale": torch.full((experts, 2 * inter), 0.01, device="cuda"),
                "w2_scale": torch.full((experts, hidden), 0.01, device="cuda"),
            }
        for tokens in (1, 8, 64, 512):
            x = torch.randn(tokens, hidden, dtype=torch.bfloat16, device="cuda")
            logits = torch.randn(tokens, experts, device="cuda")
            weights, ids = logits.softmax(-1).topk(top_k, dim=-1)
            ids = ids.to(torch.int32)
            distinct = ids.unique().numel()
            call = lambda x=x, w13=w13, w2=w2, w=weights, i=ids, s=scales: fused_moe(
                x, w13, w2, w, i, **s
            )
            seconds = time_per_call([call])
            moved = distinct * 3 * inter * hidden * w13.element_size() + 2 * x.numel() * 2
            rows.append(
                [
                    f"fused_moe {name}",
                    tokens,
                    distinct,
                    seconds * 1e6,
                    moved / seconds / 1e12,
                    f"{moved / seconds / bandwidth:.0%}",
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="/tmp/loraplex-mixtral-8x7b")
    parser.add_argument("--preset", default="mixtral-8x7b")
    parser.add_argument("--tp", type=ints, default=[1])
    parser.add_argument("--batches", type=ints, default=[1, 64])
    parser.add_argument("--hf-batches", type=ints, default=[1, 64])
    parser.add_argument("--fp8-batches", type=ints, default=[1])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--no-hf", action="store_true", help="skip transformers")
    parser.add_argument("--no-kernel", action="store_true", help="skip the kernel rows")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/moe.py needs a CUDA GPU")

    from kernel_timing import copy_bandwidth

    bandwidth = copy_bandwidth()
    kernel = [] if args.no_kernel else kernel_rows(_preset_config(args.preset), bandwidth)
    model_dir = ensure_model(args.preset, args.model, arch="mixtral")
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    roofline = {
        "bf16": bandwidth / decode_bytes_per_token(cfg, 2),
        "fp8": bandwidth / decode_bytes_per_token(cfg, 1),
    }
    lens = (args.input_len, args.output_len)
    hf = {} if args.no_hf else transformers_throughput(model_dir, args.hf_batches, *lens)
    free_cuda()
    rows = []
    for tp in args.tp:
        for weights, batches in (("bf16", args.batches), ("fp8", args.fp8_batches)):
            if not batches:
                continue
            ours = loraplex_throughput(model_dir, tp, batches, *lens, fp8=weights == "fp8")
            for batch, tok_s in ours.items():
                ref = hf.get(batch) if weights == "bf16" else None
                rows.append(
                    [
                        tp,
                        weights,
                        batch,
                        tok_s,
                        ref if ref else "-",
                        f"{tok_s / ref:.2f}x" if ref else "-",
                        f"{tok_s / (roofline[weights] * tp):.0%}" if batch == 1 else "-",
                    ]
                )
    body = (
        f"{args.preset} (mixtral, random weights), {args.input_len} prompt + "
        f"{args.output_len} generated tokens; copy bandwidth {bandwidth / 1e12:.2f} TB/s; "
        f"batch-1 bytes per token {decode_bytes_per_token(cfg, 2) / 1e9:.2f} GB bf16, "
        f"{decode_bytes_per_token(cfg, 1) / 1e9:.2f} GB fp8 (top-{cfg['num_experts_per_tok']} "
        f"experts + attention + router + LM head); roofline {roofline['bf16']:.0f} / "
        f"{roofline['fp8']:.0f} tok/s per GPU (fp8: engine fp8 linear layers, fp8 experts "
        "with bf16 activations)\n\n"
        + table(
            [
                "TP",
                "weights",
                "batch",
                "loraplex tok/s",
                "transformers tok/s",
                "ratio",
                "% of roofline",
            ],
            rows,
        )
    )
    if kernel:
        body += "\n\nOne layer's fused MoE (Mixtral-8x7B shapes, random routing):\n\n" + table(
            ["kernel", "tokens", "experts read", "us", "TB/s", "of copy bw"], kernel
        )
    record("Mixture of experts (mixtral-8x7b)", body)


def _preset_config(preset: str) -> dict:
    from loraplex.modelgen.hf_config import model_config
    from loraplex.modelgen.presets import resolve_spec

    return model_config(resolve_spec(preset, "mixtral"))


if __name__ == "__main__":
    main()
