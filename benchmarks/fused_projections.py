"""Decode projections that compute their own input, against the separate kernels they replace.

For Llama-3-8B shapes at decode row counts: the qkv and gate_up GEMVs normalizing their rows
(RMSNorm with the residual add) against `rms_norm` then the GEMV, and the down GEMV computing
silu(gate) * up against `silu_and_mul` then the GEMV. Each case is a CUDA graph of many calls
over weight copies larger than L2 (as consecutive layers are), with PDL as the engine runs it;
the table gives both times, the time saved per projection and per batch-1 step (32 layers), and
each variant's weight bytes over the measured copy bandwidth.

    python benchmarks/fused_projections.py
"""

from __future__ import annotations

import argparse

import torch
from bench_common import record, table
from kernel_timing import copy_bandwidth, fill_random_, rotation_count, time_per_call

HIDDEN, INTER, LAYERS = 4096, 14336, 32
CASES = {  # name: (weight rows, weight columns, what the GEMV computes of its input)
    "qkv": (6144, HIDDEN, "norm"),
    "gate_up": (2 * INTER, HIDDEN, "norm"),
    "down": (HIDDEN, INTER, "gated"),
}


def calls_for(kind: str, weights: list[torch.Tensor], rows: int, config: dict):
    """(fused calls, unfused calls), one per weight copy, all with the GEMV config `config`."""
    from loraplex.kernels.gemv import RowNorm, gemv
    from loraplex.kernels.rms_norm import rms_norm
    from loraplex.kernels.silu_and_mul import silu_and_mul

    k, device, dtype = weights[0].shape[1], weights[0].device, weights[0].dtype
    if kind == "gated":
        gate_up = torch.randn(rows, 2 * k, dtype=dtype, device=device)
        fused = [lambda w=w: gemv(gate_up, w, config=config, gated=True) for w in weights]
        unfused = [lambda w=w: gemv(silu_and_mul(gate_up), w, config=config) for w in weights]
        return fused, unfused
    x = torch.randn(rows, k, dtype=dtype, device=device)
    residual = torch.randn_like(x)
    summed = torch.empty_like(x)
    norm_weight = torch.rand(k, dtype=dtype, device=device) + 0.5
    norm = RowNorm(norm_weight, 1e-5, residual, summed)
    fused = [lambda w=w: gemv(x, w, config=config, norm=norm) for w in weights]
    unfused = [
        lambda w=w: gemv(rms_norm(x, norm_weight, 1e-5, residual)[0], w, config=config)
        for w in weights
    ]
    return fused, unfused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1,4")
    args = parser.parse_args()
    from loraplex.kernels.gemv import shape_config

    bandwidth = copy_bandwidth()
    rows_out = []
    saved_per_step = {}
    for rows in (int(r) for r in args.rows.split(",")):
        saved_per_step[rows] = 0.0
        for name, (n, k, kind) in CASES.items():
            config = shape_config("gemv", n, k, torch.device("cuda"))
            if kind == "norm" and not config.get("tensor_cores"):
                print(f"{name}: this GPU's config is not the tensor-core GEMV, no fused norm")
                continue
            weights = [fill_random_(torch.empty(n, k, dtype=torch.bfloat16, device="cuda"))
                       for _ in range(rotation_count(2 * n * k))]  # fmt: skip
            fused, unfused = calls_for(kind, weights, rows, config)
            t_fused, t_unfused = time_per_call(fused), time_per_call(unfused)
            del weights, fused, unfused
            floor = 2 * n * k / bandwidth
            saved_per_step[rows] += (t_unfused - t_fused) * LAYERS
            rows_out.append([
                rows, name, "norm + GEMV" if kind == "norm" else "silu_and_mul + GEMV",
                t_unfused * 1e6, f"{floor / t_unfused:.0%}", t_fused * 1e6,
                f"{floor / t_fused:.0%}", (t_unfused - t_fused) * 1e6,
            ])  # fmt: skip
            print(rows_out[-1], flush=True)
    headers = ["rows", "projection", "replaces", "separate us", "%", "fused us", "%", "saved us"]
    body = (
        f"Llama-3-8B shapes, bf16, copy bandwidth {bandwidth / 1e12:.2f} TB/s; % = weight bytes "
        "over the copy bandwidth / time\n\n"
        + table(headers, rows_out)
        + "\n\nsaved per decode step (32 layers): "
        + ", ".join(f"{s * 1e3:.3f} ms at {r} row(s)" for r, s in saved_per_step.items())
    )
    record("Decode projections computing their own input", body)


if __name__ == "__main__":
    main()
