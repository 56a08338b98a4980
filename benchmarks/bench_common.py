"""Shared pieces of the end-to-end benchmarks: the test model, prompts, timing, the results file."""

from __future__ import annotations

import datetime
import gc
import os
import shlex
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def ensure_model(preset: str, out_dir: str, arch: str = "llama") -> str:
    """The preset's random-weight checkpoint, made on the GPU if it is not there yet."""
    if not (Path(out_dir) / "config.json").is_file():
        from loraplex.modelgen import make_model

        device = "cuda" if torch.cuda.is_available() else "cpu"
        started = time.perf_counter()
        make_model(preset, out_dir, arch=arch, device=device, overwrite=True)
        print(f"made {preset} in {time.perf_counter() - started:.1f} s at {out_dir}", flush=True)
    return out_dir


def weight_bytes(model_dir: str) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def random_prompts(count: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (count, length), generator=generator)
    return ids.tolist()


def free_cuda() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
        for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def record(title: str, body: str) -> None:
    """Append a section with the command, GPU and date to RESULTS.md, and print it."""
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    env = " ".join(f"{k}={os.environ[k]}" for k in ("CUDA_VISIBLE_DEVICES",) if k in os.environ)
    stamp = datetime.date.today().isoformat()
    section = (
        f"\n## {title}\n\n`{(env + ' ' if env else '') + command}` on {gpu_name()}, {stamp}, "
        f"torch {torch.__version__}\n\n{body}\n"
    )
    print(section, flush=True)
    with RESULTS.open("a") as f:
        f.write(section)
