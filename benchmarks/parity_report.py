"""Token agreement with transformers / peft in a low-precision dtype on the GPU.

In float32 the engine matches transformers token for token (tests/engine/test_greedy_parity.py,
test_lora_parity.py, run with LORAPLEX_TEST_DEVICE=cuda). In bf16 both sides round differently,
so greedy paths may part after a near-tie; this reports how often the first N tokens agree.

    python benchmarks/parity_report.py --dtype bfloat16
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import torch
from bench_common import record, table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.engine.peft_adapters import make_adapters  # noqa: E402


def reference_greedy(model, prompts, max_tokens):
    results = []
    for prompt in prompts:
        ids = torch.tensor([prompt], device="cuda")
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                pad_token_id=2,
            )
        results.append(out[0, len(prompt) :].tolist())
    return results


def agreement(ours, theirs) -> float:
    return sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=32)
    args = parser.parse_args()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loraplex import LLM, LoRARequest, SamplingParams
    from loraplex.modelgen import cached_model

    dtype = getattr(torch, args.dtype)
    rng = random.Random(0)
    prompts = [
        [0] + [rng.randrange(5, 2048) for _ in range(rng.randrange(1, 200))]
        for _ in range(args.prompts)
    ]
    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    rows = []
    for arch in ("llama", "mistral", "qwen2"):
        model_dir = str(cached_model("tiny", arch))
        llm = LLM(
            model_dir,
            dtype=args.dtype,
            max_model_len=512,
            gpu_memory_utilization=0.3,
            enable_lora=arch == "llama",
            max_loras=4,
            max_lora_rank=16,
        )
        ours = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map="cuda")
        rows.append(
            [
                arch,
                "base",
                args.prompts,
                f"{agreement(ours, reference_greedy(hf, prompts, args.tokens)):.0%}",
            ]
        )
        if arch == "llama":
            folder = Path(tempfile.mkdtemp())
            for i, adapter in enumerate(make_adapters(model_dir, folder, 4)):
                lora = LoRARequest(f"a{i}", i + 1, str(adapter))
                ours = [o.outputs[0].token_ids for o in llm.generate(prompts, params, lora)]
                peft_model = PeftModel.from_pretrained(
                    AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map="cuda"),
                    str(adapter),
                )
                theirs = reference_greedy(peft_model, prompts, args.tokens)
                rows.append([arch, f"adapter {i}", args.prompts, f"{agreement(ours, theirs):.0%}"])
        del llm
        torch.cuda.empty_cache()
    body = (
        f"tiny presets, {args.dtype}, first {args.tokens} greedy tokens identical to "
        "transformers (base) / peft (adapter), prompts of 2-200 tokens\n\n"
        + table(["arch", "model", "prompts", "agreement"], rows)
    )
    record(f"Token agreement in {args.dtype}", body)


if __name__ == "__main__":
    main()
