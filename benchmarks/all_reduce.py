"""Tensor-parallel all-reduce latency: NCCL against PyTorch's symmetric-memory all-reduce (the
engine's `LORAPLEX_TP_ALL_REDUCE=symm_mem`), at the sizes a decode step reduces.

One process per GPU. Each case is a CUDA graph of CALLS all-reduces of one bf16 tensor
[rows, 4096] (Llama-3-8B hidden states), replayed and timed with events on rank 0; a batch-1
step of that model runs 64 of them. The table gives microseconds per all-reduce and the
algorithm bandwidth (bytes of the tensor over the time).

    python benchmarks/all_reduce.py --gpus 2
"""

from __future__ import annotations

import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from kernel_timing import graph_time_per_call

HIDDEN = 4096
CALLS = 200
REPLAYS = 10
ALL_REDUCES_PER_STEP = 64  # Llama-3-8B: o_proj and down_proj of 32 layers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _time_graph(call) -> float:
    """Seconds per call. Every rank warms up, captures and replays the same fixed sequence
    (not `time_per_call`'s count estimated per rank), so the collectives pair up."""
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    return graph_time_per_call([call], CALLS, REPLAYS, before_replay=dist.barrier)


def _worker(rank: int, world: int, port: int, rows_list: list[int], results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
    from loraplex.engine import distributed as tp

    try:
        symmetric = tp._SymmetricMemoryAllReduce(device)
    except Exception as exc:  # noqa: BLE001 - reported, NCCL still measured
        symmetric = None
        if rank == 0:
            print(f"symmetric memory unavailable: {exc}", flush=True)
    for rows in rows_list:
        x = torch.randn(rows, HIDDEN, dtype=torch.bfloat16, device=device)
        row = {"rows": rows, "nccl": _time_graph(lambda x=x: dist.all_reduce(x))}
        if symmetric is not None and symmetric.fits(x):
            row["symm_mem"] = _time_graph(lambda x=x: symmetric.all_reduce_(x))
        if rank == 0:
            results.append(row)
            print(row, flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--rows", default="1,4,16,64,256")
    args = parser.parse_args()
    if torch.cuda.device_count() < args.gpus:
        raise SystemExit(f"needs {args.gpus} GPUs, {torch.cuda.device_count()} visible")
    from bench_common import record, table

    rows_list = [int(r) for r in args.rows.split(",")]
    with mp.Manager() as manager:
        results = manager.list()
        mp.spawn(_worker, args=(args.gpus, _free_port(), rows_list, results), nprocs=args.gpus)
        results = list(results)
    lines = []
    for row in results:
        nbytes = row["rows"] * HIDDEN * 2
        line = [row["rows"], nbytes // 1024, row["nccl"] * 1e6, f"{nbytes / row['nccl'] / 1e9:.1f}"]
        if "symm_mem" in row:
            symm = row["symm_mem"]
            line += [symm * 1e6, f"{nbytes / symm / 1e9:.1f}", f"{row['nccl'] / symm:.2f}x"]
        else:
            line += ["-", "-", "-"]
        lines.append(line)
    batch1 = next((row for row in results if row["rows"] == 1), None)
    per_step = ""
    if batch1 is not None:
        best = min(batch1.get("symm_mem", float("inf")), batch1["nccl"])
        per_step = (
            f"\n\nat batch 1, {ALL_REDUCES_PER_STEP} all-reduces per Llama-3-8B decode step take "
            f"{best * ALL_REDUCES_PER_STEP * 1e3:.3f} ms with the faster of the two"
        )
    body = (
        f"{args.gpus} ranks, bf16 [rows, {HIDDEN}], {CALLS} all-reduces per CUDA graph, median of "
        f"{REPLAYS} replays\n\n"
        + table(["rows", "KiB", "NCCL us", "GB/s", "symm_mem us", "GB/s", "NCCL / symm_mem"], lines)
        + per_step
    )
    record("Tensor-parallel all-reduce", body)


if __name__ == "__main__":
    main()
