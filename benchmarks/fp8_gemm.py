"""Decode-sized linear layers on the GPU: the Triton GEMV in both variants (CUDA cores, tensor
cores) over a sweep of block sizes, in bf16 against `F.linear` (cuBLAS) and with fp8 weights
(quantizing the activations itself) against `torch._scaled_mm` with the per-token
quantization it needs, for Llama-3-8B shapes.

Each case prints time per call and the fraction of the measured copy bandwidth that reading the
weight once achieves (the floor for a memory-bound layer), then the best block sizes, to be
kept in `loraplex/kernels/configs/<GPU>.json`.

    python benchmarks/fp8_gemm.py
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
import torch.nn.functional as F
from bench_common import record, table
from kernel_timing import copy_bandwidth, fill_random_, rotation_count, time_per_call

SHAPES = {
    "qkv": (6144, 4096),
    "o": (4096, 4096),
    "gate_up": (28672, 4096),
    "down": (4096, 14336),
    "lm_head": (128256, 4096),
}


def sweep(configs, weights, call) -> tuple[float, dict, dict]:
    """(best seconds per call, its config, seconds of every config by its key) over
    `configs`, each timed over the rotating `weights`."""
    timings = {}
    for cfg in configs:
        try:
            t = time_per_call([lambda w=w, cfg=cfg: call(w, cfg) for w in weights])
        except Exception as error:  # a block size the compiler cannot fit
            print(f"skip {describe(cfg)}: {type(error).__name__}: {str(error)[:200]}", flush=True)
            continue
        timings[tuple(sorted(cfg.items()))] = t
    key = min(timings, key=timings.get)
    return timings[key], dict(key), timings


def configs_for(quick: bool) -> dict[str, list[dict]]:
    """Block sizes per kernel variant: CUDA-core tiles keep a float32 partial sum per element
    of [rows, block_n, block_k], so they stay at 4K-16K elements; tensor-core tiles are
    [block_n, block_k] weights against 16 padded rows, with fp8 operands either widened to
    fp16 ("dot") or multiplied as fp8 ("dot8", fp8 weights only)."""
    if quick:
        fma_tiles = [(8, 1024), (16, 512), (16, 1024), (32, 256)]
        dot_tiles = [(n, k) for n in (32, 64) for k in (128, 256)]
        stages, warps = [3, 5], [4]
    else:
        fma_tiles = [(8, 512), (8, 1024), (16, 256), (16, 512), (16, 1024), (32, 256), (32, 512)]
        dot_tiles = [(n, k) for n in (16, 32, 64) for k in (128, 256, 512)]
        stages, warps = [2, 3, 4, 5, 6], [2, 4, 8]
    variants = {
        "fma": (fma_tiles, {}),
        "dot": (dot_tiles, {"tensor_cores": True}),
        "dot8": (dot_tiles, {"tensor_cores": True, "native_fp8": True}),
    }
    return {
        name: [
            {"max_m": 4, "block_n": n, "block_k": k, "num_warps": w, "num_stages": s,
             "tensor_cores": False, **extra}
            for (n, k), s, w in itertools.product(tiles, stages, warps)
        ]
        for name, (tiles, extra) in variants.items()
    }  # fmt: skip


def describe(cfg: dict) -> str:
    kind = "dot8" if cfg.get("native_fp8") else "dot" if cfg["tensor_cores"] else "fma"
    return f"{kind} n{cfg['block_n']} k{cfg['block_k']} s{cfg['num_stages']} w{cfg['num_warps']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1,4")
    parser.add_argument("--layers", default=",".join(SHAPES), help="which of " + ",".join(SHAPES))
    parser.add_argument("--quick", action="store_true", help="fewer block sizes")
    parser.add_argument(
        "--write-config", action="store_true", help="keep the fastest configs in the GPU's table"
    )
    args = parser.parse_args()

    from loraplex.kernels.fp8_linear import fp8_gemv, quantize_per_token
    from loraplex.kernels.gemv import gemv

    bandwidth = copy_bandwidth()
    variants = configs_for(args.quick)
    bf16_configs = variants["fma"] + variants["dot"]
    fp8_configs = bf16_configs + variants["dot8"]
    row_counts = [int(r) for r in args.rows.split(",")]
    rows_out = []
    # seconds by dtype ("bf16", "fp8", "cublas"), (n, k), rows (and config key)
    spent: dict[str, dict] = {"bf16": {}, "fp8": {}, "cublas": {}}
    for rows in row_counts:
        for name in args.layers.split(","):
            n, k = SHAPES[name]
            bf16 = [fill_random_(torch.empty(n, k, dtype=torch.bfloat16, device="cuda"))
                    for _ in range(rotation_count(2 * n * k))]  # fmt: skip
            x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
            floor = n * k / bandwidth
            t_bf16 = time_per_call([lambda w=w, x=x: F.linear(x, w) for w in bf16])

            def bf16_call(w, cfg, x=x):
                return gemv(x, w, config=cfg)

            t_gemv, cfg_gemv, spent["bf16"].setdefault((n, k), {})[rows] = sweep(
                bf16_configs, bf16, bf16_call
            )
            spent["cublas"].setdefault((n, k), {})[rows] = t_bf16
            del bf16
            row = [rows, name, t_bf16 * 1e6, f"{2 * floor / t_bf16:.0%}", t_gemv * 1e6,
                   f"{2 * floor / t_gemv:.0%}", describe(cfg_gemv)]  # fmt: skip
            if name == "lm_head":  # stays bf16 under quantization="fp8"
                rows_out.append(row + ["", "", "", "", "", ""])
                print(rows_out[-1], flush=True)
                continue
            weights = [fill_random_(torch.empty(n, k, dtype=torch.float8_e4m3fn, device="cuda"))
                       for _ in range(rotation_count(n * k))]  # fmt: skip
            scale = torch.rand(n, device="cuda") + 0.5

            def scaled_mm(w, x=x, scale=scale):
                q, s = quantize_per_token(x)
                return torch._scaled_mm(
                    q, w.t(), scale_a=s, scale_b=scale.view(1, -1), out_dtype=x.dtype
                )

            def fp8_call(w, cfg, x=x, scale=scale):
                return fp8_gemv(x, w, scale, config=cfg)

            t_scaled = time_per_call([lambda w=w: scaled_mm(w) for w in weights])
            t_best, cfg_best, spent["fp8"].setdefault((n, k), {})[rows] = sweep(
                fp8_configs, weights, fp8_call
            )
            del weights
            rows_out.append(row + [
                t_scaled * 1e6, f"{floor / t_scaled:.0%}", t_best * 1e6,
                f"{floor / t_best:.0%}", describe(cfg_best), f"{t_bf16 / t_best:.2f}x",
            ])  # fmt: skip
            print(rows_out[-1], flush=True)
    headers = ["rows", "layer", "bf16 cuBLAS us", "%", "bf16 triton us", "%", "best bf16 blocks",
               "fp8 _scaled_mm us", "%", "fp8 triton us", "%", "best fp8 blocks",
               "cuBLAS bf16 / triton fp8"]  # fmt: skip
    choice = {dtype: best_configs(spent[dtype]) for dtype in ("bf16", "fp8")}
    lines = [
        f"{dtype} {shape}: {describe(cfg)}"
        for dtype, (default, per_shape) in choice.items()
        for shape, cfg in [("all layers", default), *per_shape.items()]
    ]
    body = (
        f"copy bandwidth {bandwidth / 1e12:.2f} TB/s; % = weight bytes read once / time / "
        "copy bandwidth; fma = CUDA-core GEMV, dot = tensor-core (swapped operands) GEMV, "
        "dot8 = the same on fp8 operands\n\n"
        + table(headers, rows_out)
        + "\n\nfastest configs (summed over row counts), kept per GPU with --write-config:\n"
        + "\n".join(f"- {line}" for line in lines)
    )
    record("Linear layers at decode batch sizes (bf16 and FP8)", body)
    if args.write_config:
        write_config(choice, spent)


def _summed(timings_by_rows: dict) -> dict:
    """{config key: seconds summed over row counts} for the configs timed at every count."""
    keys = set.intersection(*(set(t) for t in timings_by_rows.values()))
    return {key: sum(t[key] for t in timings_by_rows.values()) for key in keys}


def best_configs(by_shape: dict) -> tuple[dict, dict]:
    """(the fastest config over all shapes, {(n, k): the fastest for that shape})."""
    per_shape = {shape: _summed(by_rows) for shape, by_rows in by_shape.items()}
    keys = set.intersection(*(set(t) for t in per_shape.values()))
    overall = min(keys, key=lambda key: sum(t[key] for t in per_shape.values()))
    return dict(overall), {shape: dict(min(t, key=t.get)) for shape, t in per_shape.items()}


def write_config(choice: dict, spent: dict) -> None:
    """Keep the fastest configs in this GPU's table, overall ("default") and per weight shape
    ("NxK"); the engine's bf16 linears use the GEMV up to the largest row count at which the
    per-shape configs beat cuBLAS on the sum of all layers."""
    from kernel_tuning import CONFIG_DIR

    from loraplex.kernels.launch_config import device_table_name

    path = CONFIG_DIR / f"{device_table_name(torch.device('cuda'))}.json"
    stored = json.loads(path.read_text()) if path.is_file() else {}
    row_counts = sorted(next(iter(spent["cublas"].values())))
    _, bf16_shapes = choice["bf16"]
    faster = [
        rows
        for rows in row_counts
        if sum(spent["bf16"][shape][rows][tuple(sorted(cfg.items()))]
               for shape, cfg in bf16_shapes.items())
        < sum(by_rows[rows] for by_rows in spent["cublas"].values())
    ]  # fmt: skip
    for op, dtype in (("fp8_gemv", "fp8"), ("gemv", "bf16")):
        default, per_shape = choice[dtype]
        entries = {"default": default} | {f"{n}x{k}": cfg for (n, k), cfg in per_shape.items()}
        stored[op] = {key: {**cfg, "max_m": row_counts[-1]} for key, cfg in entries.items()}
    stored["gemv"]["default"]["linear_max_m"] = max(faster, default=0)
    path.write_text(json.dumps(stored, indent=1) + "\n")
    print(
        f"wrote {path}: {json.dumps({op: stored[op] for op in ('fp8_gemv', 'gemv')})}", flush=True
    )


if __name__ == "__main__":
    main()
