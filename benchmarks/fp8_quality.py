"""Quality of FP8 weights and of the FP8 KV cache: top-1 next-token agreement and KL
divergence over --positions teacher-forced positions, against the same model in bf16 (what FP8
replaces) and in float32, beside plain bf16 against float32 (the control: how much this model's
outputs move under any rounding at all).

    python benchmarks/fp8_quality.py                 # small preset (~100M parameters)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_common import random_prompts, record, table


def compare(reference: list[torch.Tensor], candidate: list[torch.Tensor]) -> tuple[float, float]:
    ref, cand = torch.cat(reference), torch.cat(candidate)
    top1 = (ref.argmax(-1) == cand.argmax(-1)).float().mean().item()
    kl = torch.nn.functional.kl_div(
        cand.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean"
    ).item()
    return top1, kl


def _cells(result) -> list[str]:
    if result[0] == "-":
        return list(result)
    top1, kl = result
    return [f"{top1:.1%}", f"{kl:.4f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--positions", type=int, default=1000)
    parser.add_argument("--prompt-len", type=int, default=250)
    args = parser.parse_args()

    from loraplex import LLM
    from loraplex.engine.scoring import prompt_logits
    from loraplex.modelgen import cached_model

    model_dir = str(cached_model(args.preset, "llama"))
    count = -(-args.positions // args.prompt_len)
    vocab = min(4000, json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"])
    prompts = [[0, *p] for p in random_prompts(count, args.prompt_len - 1, vocab, seed=3)]

    def logits(dtype: str = "bfloat16", **kwargs) -> list[torch.Tensor]:
        llm = LLM(model_dir, dtype=dtype, max_model_len=1024, gpu_memory_utilization=0.3, **kwargs)
        return [prompt_logits(llm.llm_engine, p) for p in prompts]

    full = logits("float32")
    bf16 = logits()
    rows = []
    for name, kwargs in (
        ("bf16 (control)", None),
        ("fp8 weights", {"quantization": "fp8"}),
        ("fp8 KV cache", {"kv_cache_dtype": "fp8"}),
    ):
        candidate = bf16 if kwargs is None else logits(**kwargs)
        vs_bf16 = ["-", "-"] if kwargs is None else compare(bf16, candidate)
        vs_full = compare(full, candidate)
        rows.append([name, count * args.prompt_len, *_cells(vs_bf16), *_cells(vs_full)])
    body = (
        f"{args.preset} preset (random weights), teacher-forced positions of random prompts "
        "(fp8: per-channel weight scales, per-token activation scales; KV scales 1.0)\n\n"
        + table(
            ["variant", "positions", "top-1 vs bf16", "KL vs bf16", "top-1 vs fp32", "KL vs fp32"],
            rows,
        )
    )
    record("FP8 quality", body)


if __name__ == "__main__":
    main()
