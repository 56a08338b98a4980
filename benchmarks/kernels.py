"""Kernel micro-benchmarks on a CUDA GPU (Llama-3-8B shapes), printed as a table.

    PYTHONPATH=. python benchmarks/kernels.py [--quick] [--json results.json] [--markdown t.md]

Each case is timed as a CUDA graph of many calls over input copies larger than the L2 cache
(median of replays, CUDA events), and compared with its floor: the bytes it must move at the
measured device-to-device copy bandwidth, or for prefill attention the bf16 matrix rate.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_cases import LLAMA3_8B_PROJECTIONS, attention_case, lora_case  # noqa: E402
from kernel_timing import copy_bandwidth, time_per_call  # noqa: E402

from loraplex.kernels.reference import FP8_DTYPE  # noqa: E402

BF16_PEAK_FLOPS = 790e12  # dense bf16 matrix products measured on this H200 (KINDS.md)
DECODE_BATCHES = (1, 16, 64, 256)
DECODE_CONTEXTS = (512, 4096, 32768)
KV_DTYPES = {"bf16": torch.bfloat16, "fp8": FP8_DTYPE}
LORA_DECODE_ADAPTERS = (1, 8, 32, 128, 256)
LORA_PREFILL_ADAPTERS = (1, 8)


def decode_attention(bandwidth: float, quick: bool) -> list[dict]:
    rows = []
    for kv_name, kv_dtype in KV_DTYPES.items():
        for batch in DECODE_BATCHES:
            for context in DECODE_CONTEXTS:
                if quick and (batch, context) not in ((64, 4096), (1, 32768)):
                    continue
                case = attention_case(batch, context, 1, kv_dtype)
                seconds = time_per_call(case.calls())
                rows.append(
                    {
                        "kernel": "decode attention",
                        "case": f"{kv_name} KV, batch {batch}, context {context}",
                        "us": seconds * 1e6,
                        "min_MB": case.min_bytes / 1e6,
                        "TB/s": case.min_bytes / seconds / 1e12,
                        "of_copy_bw": case.min_bytes / seconds / bandwidth,
                    }
                )
                del case
                torch.cuda.empty_cache()
    return rows


def prefill_attention(bandwidth: float) -> list[dict]:
    rows = []
    for kv_name, kv_dtype in KV_DTYPES.items():
        case = attention_case(8, 2048, 2048, kv_dtype)
        seconds = time_per_call(case.calls())
        rows.append(
            {
                "kernel": "prefill attention",
                "case": f"{kv_name} KV, 8 x 2048 tokens, causal",
                "us": seconds * 1e6,
                "min_MB": case.min_bytes / 1e6,
                "TFLOP/s": case.flops / seconds / 1e12,
                "of_bf16_peak": case.flops / seconds / BF16_PEAK_FLOPS,
            }
        )
    return rows


def lora(bandwidth: float, quick: bool) -> list[dict]:
    rows = []
    regimes = [(False, 256, a) for a in LORA_DECODE_ADAPTERS]
    regimes += [(True, 4096, a) for a in LORA_PREFILL_ADAPTERS]
    for rank in (16, 64):
        for projection in LLAMA3_8B_PROJECTIONS:
            for prefill, tokens, adapters in regimes:
                if quick and (projection != "o" or adapters not in (1, 256)):
                    continue
                case = lora_case(projection, rank, tokens, adapters, prefill=prefill)
                seconds = time_per_call(case.kernel_calls())
                torch_seconds = time_per_call(case.torch_calls, target_seconds=5e-3, replays=5)
                row = {
                    "kernel": "lora shrink+expand",
                    "case": f"{projection} r{rank} {'prefill' if prefill else 'decode'} "
                    f"T={tokens} adapters={adapters}",
                    "us": seconds * 1e6,
                    "torch_us": torch_seconds * 1e6,
                    "speedup": torch_seconds / seconds,
                    "weights_MB": case.weight_bytes / 1e6,
                    "x_weight_floor": seconds * bandwidth / case.weight_bytes,
                    "min_MB": case.min_bytes / 1e6,
                    "of_copy_bw": case.min_bytes / seconds / bandwidth,
                }
                if not prefill and adapters == 1:
                    base_seconds = time_per_call(case.base_calls)
                    row["base_us"] = base_seconds * 1e6
                    row["lora_over_base"] = seconds / base_seconds
                rows.append(row)
                del case
                torch.cuda.empty_cache()
    return rows


def single_adapter_layer_overhead(rows: list[dict]) -> list[dict]:
    """The whole decoder layer: LoRA on all four projections over their base products."""
    summary = []
    for rank in (16, 64):
        picked = [r for r in rows if "base_us" in r and f" r{rank} " in r["case"]]
        if len(picked) == len(LLAMA3_8B_PROJECTIONS):
            lora_us = sum(r["us"] for r in picked)
            base_us = sum(r["base_us"] for r in picked)
            summary.append(
                {
                    "kernel": "lora decode layer",
                    "case": f"all projections r{rank} T=256 one adapter",
                    "us": lora_us,
                    "base_us": base_us,
                    "lora_over_base": lora_us / base_us,
                }
            )
    return summary


def format_table(rows: list[dict]) -> str:
    columns = [
        "kernel",
        "case",
        "us",
        "min_MB",
        "TB/s",
        "of_copy_bw",
        "TFLOP/s",
        "of_bf16_peak",
        "torch_us",
        "speedup",
        "weights_MB",
        "x_weight_floor",
        "base_us",
        "lora_over_base",
    ]
    used = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(used) + " |", "|" + "---|" * len(used)]
    for row in rows:
        cells = []
        for column in used:
            value = row.get(column, "")
            cells.append(f"{value:.3g}" if isinstance(value, float) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few cases of each kernel")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--markdown", type=Path, help="write the table here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("the kernel benchmarks need a CUDA GPU")
    torch.manual_seed(0)
    bandwidth = copy_bandwidth()
    header = (
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"{datetime.date.today().isoformat()}, copy bandwidth {bandwidth / 1e12:.2f} TB/s"
    )
    print(header, flush=True)
    rows = decode_attention(bandwidth, args.quick)
    rows += prefill_attention(bandwidth)
    lora_rows = lora(bandwidth, args.quick)
    rows += lora_rows + single_adapter_layer_overhead(lora_rows)
    table = format_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    if args.markdown:
        args.markdown.write_text(f"{header}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
