"""Multi-LoRA throughput: one batch mixing many adapters, beside the base model and peft.

Each adapter is rank --rank on all seven projections. Prompt i of the batch uses adapter
i mod k, for k distinct adapters; k = 0 is the base model alone. In the same run, peft's
mixed-adapter generate (`adapter_names=`) serves --peft-batch prompts over 8 adapters.

    python benchmarks/lora_throughput.py            # llama3-8b preset, batch 256, k in 1,8,32,128
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_common import ensure_model, free_cuda, random_prompts, record, table, timed
from safetensors.torch import save_file

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def write_adapter(folder: Path, config: dict, rank: int, seed: int) -> Path:
    """A PEFT folder with random A and B (small values: only the speed matters here)."""
    folder.mkdir(parents=True, exist_ok=True)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    shapes = {
        "q_proj": (hidden, q),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (q, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module in MODULES:
            block = "self_attn" if module in MODULES[:4] else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            fan_in, fan_out = shapes[module]
            a = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
            b = torch.randn(fan_out, rank, generator=generator) * 0.01
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": rank,
                "lora_alpha": 2 * rank,
                "target_modules": MODULES,
                "bias": "none",
                "lora_dropout": 0.0,
                "task_type": "CAUSAL_LM",
            }
        )
    )
    return folder


def peft_throughput(model_dir: str, adapters: list[Path], batch: int, in_len: int, out_len: int):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map=device)
    model = PeftModel.from_pretrained(model, str(adapters[0]), adapter_name="a0")
    for i, path in enumerate(adapters[1:], start=1):
        model.load_adapter(str(path), adapter_name=f"a{i}")
    model.eval()
    ids = torch.tensor(random_prompts(batch, in_len, model.config.vocab_size), device=device)
    names = [f"a{i % len(adapters)}" for i in range(batch)]
    kwargs = dict(
        do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0, adapter_names=names
    )
    with torch.no_grad():
        model.generate(input_ids=ids, max_new_tokens=2, min_new_tokens=2, **kwargs)

        def run():
            model.generate(input_ids=ids, max_new_tokens=out_len, min_new_tokens=out_len, **kwargs)

        tok_s = batch * out_len / timed(run)
    print(f"peft batch {batch}, {len(adapters)} adapters: {tok_s:.1f} tok/s", flush=True)
    return tok_s


def loraplex_throughput(model_dir: str, requests: list, args) -> dict[tuple[int, int], float]:
    """{(batch, distinct adapters): generated tokens/s}."""
    from loraplex import LLM, SamplingParams

    slots = max(len(requests), 1)
    llm = LLM(
        model_dir,
        dtype="bfloat16",
        enable_lora=True,
        max_loras=slots,
        max_cpu_loras=slots,
        max_lora_rank=args.rank,
        max_num_seqs=max(args.batch),
        gpu_memory_utilization=0.85,
        quantization=args.quantization,
        tensor_parallel_size=args.tp,
    )
    for request in requests:
        llm.llm_engine.add_lora(request)
    vocab = llm.llm_engine.config.model.vocab_size
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    results = {}
    for batch, k in ((batch, k) for batch in args.batch for k in args.adapters):
        prompts = random_prompts(batch, args.input_len, vocab)
        loras = [requests[i % k] if k else None for i in range(batch)]
        # The whole run once untimed: loads every adapter into its slot and compiles the
        # kernels for these shapes (decode attention variants for every context length
        # included) before the timed run.
        llm.generate(prompts, params, loras)
        seconds = timed(lambda prompts=prompts, loras=loras: llm.generate(prompts, params, loras))
        results[batch, k] = batch * args.output_len / seconds
        print(f"loraplex batch {batch}, {k} adapters: {results[batch, k]:.1f} tok/s", flush=True)
    llm.llm_engine.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="/tmp/loraplex-llama3-8b")
    parser.add_argument("--preset", default="llama3-8b")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=ints, default=[256], help="batch sizes, comma-separated")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    parser.add_argument("--adapters", type=ints, default=[0, 1, 8, 32, 128])
    parser.add_argument(
        "--distinct-files",
        type=int,
        default=8,
        help="adapter folders written; more ids reuse them as separate adapters",
    )
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--quantization", choices=["fp8"], default=None, help="base weights")
    parser.add_argument("--peft-batch", type=int, default=64, help="0: skip peft")
    parser.add_argument("--peft-output-len", type=int, default=32)
    args = parser.parse_args()

    from loraplex import LoRARequest

    model_dir = ensure_model(args.preset, args.model)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    root = Path(model_dir + "-adapters")
    folders = [
        write_adapter(root / f"r{args.rank}-{i}", config, args.rank, seed=i)
        for i in range(args.distinct_files)
    ]
    most = max(args.adapters)
    requests = [LoRARequest(f"a{i}", i + 1, str(folders[i % len(folders)])) for i in range(most)]
    results = loraplex_throughput(model_dir, requests, args)
    free_cuda()
    peft = None
    if args.peft_batch:
        peft = peft_throughput(
            model_dir, folders[:8], args.peft_batch, args.input_len, args.peft_output_len
        )
    rows = []
    for (batch, k), tok_s in results.items():
        base = results.get((batch, 0))
        rows.append([
            k or "base", batch, tok_s, f"{tok_s / base:.0%}" if base else "-",
            f"{tok_s / peft:.1f}x" if peft else "-",
        ])  # fmt: skip
    if peft:
        base = results.get((args.peft_batch, 0))
        pct = f"{peft / base:.0%}" if base else "-"
        rows.append(["peft, 8", args.peft_batch, peft, pct, "1.0x"])
    weights = "fp8 weights" if args.quantization else "bf16"
    body = (
        f"{args.preset}, {weights}, tensor parallel {args.tp}, "
        f"rank {args.rank} on all 7 projections, "
        f"{args.input_len} prompt + "
        f"{args.output_len} generated tokens"
        + (f" (peft: {args.peft_output_len} generated)" if peft else "")
        + "\n\n"
        + table(["distinct adapters", "batch", "tok/s", "vs base", "vs peft"], rows)
    )
    record("Multi-LoRA throughput", body)


if __name__ == "__main__":
    main()
