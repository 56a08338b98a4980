"""Decode-sized linear layers on the GPU: the fused quantize-and-multiply Triton kernel
(`fp8_gemv`) over a sweep of its block sizes, beside `torch._scaled_mm` (with the per-token
quantization it needs), the bf16 `F.linear` (cuBLAS) it replaces and the plain Triton `gemv`
on the bf16 weights, for Llama-3-8B shapes.

Each case prints time per call and the fraction of the measured copy bandwidth that reading the
weight once achieves (the floor for a memory-bound layer), then the best block sizes, to be
kept in `loraplex/kernels/configs/<GPU>.json`.

    python benchmarks/fp8_gemm.py
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
from bench_common import record, table
from kernel_timing import copy_bandwidth, fill_random_, rotation_count, time_per_call

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def sweep(configs, weights, call, totals) -> tuple[float, dict]:
    """(best seconds per call, its config) over `configs`, each timed over the rotating
    `weights`; adds every config's time to `totals` (to pick one config for all cases)."""
    timings = []
    for cfg in configs:
        try:
            t = time_per_call([lambda w=w, cfg=cfg: call(w, cfg) for w in weights])
        except Exception as error:  # a block size the compiler cannot fit
            print(f"skip {cfg}: {type(error).__name__}", flush=True)
            continue
        timings.append((t, cfg))
        key = tuple(sorted(cfg.items()))
        totals[key] = totals.get(key, 0.0) + t
    return min(timings, key=lambda item: item[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1,4")
    parser.add_argument("--quick", action="store_true", help="fewer block sizes")
    args = parser.parse_args()

    from loraplex.kernels.fp8_linear import fp8_gemv, quantize_per_token
    from loraplex.kernels.gemv import gemv

    bandwidth = copy_bandwidth()
    # (block_n, block_k): the kernel keeps a float32 partial sum per element of its
    # [rows, block_n, block_k] tile, so the tile is kept at 4K-16K elements.
    tiles = [(8, 512), (8, 1024), (8, 2048), (16, 256), (16, 512), (16, 1024), (32, 256), (32, 512)]
    stages = [4] if args.quick else [2, 3, 4]
    warps = [4] if args.quick else [4, 8]
    configs = [
        {"max_m": 4, "block_n": n, "block_k": k, "num_warps": w, "num_stages": s}
        for (n, k), s, w in itertools.product(tiles, stages, warps)
    ]
    rows_out, best_totals, best_gemv_totals = [], {}, {}
    for rows in [int(r) for r in args.rows.split(",")]:
        for name, (n, k) in SHAPES.items():
            copies = rotation_count(n * k)
            weights = [fill_random_(torch.empty(n, k, dtype=torch.float8_e4m3fn, device="cuda"))
                       for _ in range(copies)]  # fmt: skip
            bf16 = [fill_random_(torch.empty(n, k, dtype=torch.bfloat16, device="cuda"))
                    for _ in range(rotation_count(2 * n * k))]  # fmt: skip
            scale = torch.rand(n, device="cuda") + 0.5
            x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
            floor = n * k / bandwidth

            def scaled_mm(w, x=x, scale=scale):
                q, s = quantize_per_token(x)
                return torch._scaled_mm(
                    q, w.t(), scale_a=s, scale_b=scale.view(1, -1), out_dtype=x.dtype
                )

            t_scaled = time_per_call([lambda w=w: scaled_mm(w) for w in weights])
            t_bf16 = time_per_call([lambda w=w, x=x: F.linear(x, w) for w in bf16])

            def fp8_call(w, cfg, x=x, scale=scale):
                return fp8_gemv(x, w, scale, config=cfg)

            def bf16_call(w, cfg, x=x):
                return gemv(x, w, config=cfg)

            t_best, cfg_best = sweep(configs, weights, fp8_call, best_totals)
            t_gemv, _ = sweep(configs, bf16, bf16_call, best_gemv_totals)
            rows_out.append([
                rows, name, t_best * 1e6, f"{floor / t_best:.0%}", t_scaled * 1e6,
                f"{floor / t_scaled:.0%}", t_bf16 * 1e6, f"{2 * floor / t_bf16:.0%}",
                t_gemv * 1e6, f"{2 * floor / t_gemv:.0%}", f"{t_bf16 / t_best:.2f}x",
                f"n{cfg_best['block_n']} k{cfg_best['block_k']} s{cfg_best['num_stages']} "
                f"w{cfg_best['num_warps']}",
            ])  # fmt: skip
            print(rows_out[-1], flush=True)
            del weights, bf16
    overall = min(best_totals.items(), key=lambda item: item[1])
    overall_gemv = min(best_gemv_totals.items(), key=lambda item: item[1])
    body = (
        f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; % = weight bytes read once / time / "
        f"copy bandwidth\n\n"
        + table(
            [
                "rows",
                "layer",
                "triton fp8 us",
                "%",
                "_scaled_mm us",
                "%",
                "bf16 cuBLAS us",
                "%",
                "bf16 triton GEMV us",
                "%",
                "bf16 cuBLAS / fp8",
                "best blocks",
            ],
            rows_out,
        )  # fmt: skip
        + f"\n\nbest single fp8_gemv config over all cases: {dict(overall[0])}"
        + f"\nbest single gemv (bf16) config over all cases: {dict(overall_gemv[0])}"
    )
    record("FP8 linear at decode batch sizes", body)


if __name__ == "__main__":
    main()
