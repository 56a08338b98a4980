"""Adapter hot-load time: disk -> CPU memory (validate, read, scale, pin) and CPU memory -> a
GPU slot (one pinned host-to-device copy, then multi-tensor scatter into the slot buffers).

    python benchmarks/lora_hotload.py          # rank-16 adapter on all projections of llama3-8b
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_common import ensure_model, record, table
from lora_throughput import write_adapter


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="/tmp/loraplex-llama3-8b")
    parser.add_argument("--preset", default="llama3-8b")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    from loraplex import LLM, LoRARequest

    model_dir = ensure_model(args.preset, args.model)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    folders = [
        write_adapter(
            Path(model_dir + "-adapters") / f"r{args.rank}-{i}", config, args.rank, seed=i
        )
        for i in range(2)
    ]
    llm = LLM(
        model_dir,
        dtype="bfloat16",
        enable_lora=True,
        max_loras=2,
        max_cpu_loras=64,
        max_lora_rank=args.rank,
        gpu_memory_utilization=0.5,
        enforce_eager=True,
    )
    from loraplex.engine.layers.lora import _on_device

    manager = llm.llm_engine.lora_manager
    device = next(iter(llm.llm_engine.executor.runner.lora_layers.values())).lora_a[0].device
    disk_ms, slot_ms, copy_ms = [], [], []
    for i in range(args.repeats):
        request = LoRARequest(f"a{i}", i + 1, str(folders[i % 2]))
        started = time.perf_counter()
        adapter = manager.get(request)  # disk -> pinned CPU memory
        disk_ms.append((time.perf_counter() - started) * 1e3)
        _sync()
        started = time.perf_counter()
        manager.activate({adapter}, set())  # CPU -> GPU slot (evicts the older one)
        _sync()
        slot_ms.append((time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        _on_device(adapter.weights, device)  # the transfer alone, without the scatter
        _sync()
        copy_ms.append((time.perf_counter() - started) * 1e3)
    size = adapter.num_bytes
    rows = [
        ["disk -> CPU (pinned)", f"{statistics.median(disk_ms):.1f}"],
        ["CPU -> GPU slot", f"{statistics.median(slot_ms):.2f}"],
        ["of which the host-to-GPU transfer", f"{statistics.median(copy_ms):.2f}"],
    ]
    body = (
        f"{args.preset}, rank {args.rank} on all 7 projections ({size / 1e6:.0f} MB in bf16), "
        f"median of {args.repeats} loads (the page cache holds the files)\n\n"
        + table(["path", "ms per adapter"], rows)
    )
    record("Adapter hot-load", body)


if __name__ == "__main__":
    main()
