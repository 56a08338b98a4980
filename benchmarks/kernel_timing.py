"""Timing kernels on a CUDA GPU: CUDA graphs of many calls over rotating inputs, CUDA events,
medians, and the measured copy bandwidth that memory-bound results are compared with."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch

FILL_CHUNK_BYTES = 1 << 28


def l2_cache_bytes() -> int:
    return torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size


def rotation_count(working_set_bytes: int, *, factor: int = 4, cap: int = 128) -> int:
    """Copies of a case's inputs to cycle through so that together they exceed the L2 cache
    `factor` times (each call then reads from memory, as in a model with many layers)."""
    return max(1, min(cap, math.ceil(factor * l2_cache_bytes() / max(working_set_bytes, 1))))


def fill_random_(tensor: torch.Tensor) -> torch.Tensor:
    """Fill with N(0, 1) values in chunks (no float32 copy of a huge tensor); fp8 tensors get
    values of the same spread. Never zeros: they hide unwritten outputs and run faster."""
    flat = tensor.view(-1)
    step = max(1, FILL_CHUNK_BYTES // tensor.element_size())
    for start in range(0, flat.numel(), step):
        chunk = flat[start : start + step]
        if tensor.dtype == torch.float8_e4m3fn:
            chunk.copy_(torch.randn(chunk.shape, device=tensor.device, dtype=torch.bfloat16))
        else:
            chunk.normal_()
    return tensor


def time_per_call(
    calls: list[Callable[[], object]], *, target_seconds: float = 2e-3, replays: int = 15
) -> float:
    """Median seconds per call: `calls` (one per input copy) are warmed up (compiling them),
    then captured round-robin into one CUDA graph long enough to dwarf the replay overhead,
    whose replays are timed with events."""
    for call in calls:
        call()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for call in calls:
        call()
    end.record()
    end.synchronize()
    estimate = start.elapsed_time(end) / 1e3 / len(calls)
    count = max(len(calls), min(2000, math.ceil(target_seconds / max(estimate, 1e-7))))
    return graph_time_per_call(calls, count, replays)


def graph_time_per_call(
    calls: list[Callable[[], object]],
    count: int,
    replays: int,
    before_replay: Callable[[], object] | None = None,
) -> float:
    """Median seconds per call of `count` calls (round-robin over `calls`, compiled already)
    captured in one CUDA graph, over `replays` replays timed with events; `before_replay`
    runs ahead of each (a barrier, when ranks replay collectives together)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(count):
            calls[i % len(calls)]()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(replays):
        if before_replay is not None:
            before_replay()
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / count)
    del graph
    return statistics.median(samples)


def copy_bandwidth(num_bytes: int = 4 << 30, repeats: int = 10) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written. Timed
    eagerly: a copy captured in a graph becomes a memcpy node that runs slower."""
    src = torch.empty(num_bytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(repeats):
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3)
    return 2 * num_bytes / statistics.median(samples)
