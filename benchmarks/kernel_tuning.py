"""Sweep the kernels' launch parameters on this GPU and write the fastest to the GPU's config
file, `loraplex/kernels/configs/<GPU name>.json` (or `--out`).

    PYTHONPATH=. python benchmarks/kernel_tuning.py [--out path.json]

Each candidate is timed on a few representative Llama-3-8B cases (see `kernel_cases`); the
winner has the lowest mean time relative to the best candidate of each case.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_cases import attention_case, lora_case  # noqa: E402
from kernel_timing import time_per_call  # noqa: E402

from loraplex.kernels.launch_config import device_table_name  # noqa: E402
from loraplex.kernels.lora_expand import ExpandConfig  # noqa: E402
from loraplex.kernels.lora_shrink import ShrinkConfig  # noqa: E402
from loraplex.kernels.paged_decode import DecodeConfig, paged_decode  # noqa: E402
from loraplex.kernels.paged_kv import checked_scale  # noqa: E402
from loraplex.kernels.paged_prefill import PrefillConfig, paged_prefill  # noqa: E402
from loraplex.kernels.reference import FP8_DTYPE  # noqa: E402

CONFIG_DIR = Path(__file__).resolve().parent.parent / "loraplex" / "kernels" / "configs"


def _attention_runner(launch: Callable[..., object], config, decode: bool):
    """paged_attention's signature, calling one kernel launcher with a fixed config."""

    def run(query, k_cache, v_cache, tables, lens, cu, *, out, k_scale=None, v_scale=None, **kw):
        scales = {
            "k_scale": checked_scale(k_scale, "k_scale", query.device),
            "v_scale": checked_scale(v_scale, "v_scale", query.device),
        }
        extra = {"max_context_len": kw["max_context_len"]} if decode else {}
        args = (query, k_cache, v_cache, tables, lens, cu, out)
        return launch(
            *args, scale=kw["scale"], sliding_window=None, config=config, **scales, **extra
        )

    return run


def pick(name: str, candidates: Sequence, timings: Callable[[object], list[float]]):
    """The candidate with the lowest mean time relative to each case's best."""
    results = {}
    for candidate in candidates:
        try:
            results[candidate] = timings(candidate)
        except Exception as error:  # a config the compiler rejects (too much shared memory)
            print(f"  {name}: {candidate} failed: {type(error).__name__}: {error}"[:300])
    num_cases = len(next(iter(results.values())))
    best_per_case = [min(times[i] for times in results.values()) for i in range(num_cases)]
    scores = {
        c: sum(t / b for t, b in zip(times, best_per_case, strict=True)) / len(times)
        for c, times in results.items()
    }
    for candidate, score in sorted(scores.items(), key=lambda item: item[1]):
        micros = ", ".join(f"{t * 1e6:.1f}" for t in results[candidate])
        print(f"  {name}: {score:.3f}  [{micros}] us  {candidate}", flush=True)
    return min(scores, key=scores.get)


def tune_decode(kv_dtype: torch.dtype = torch.bfloat16) -> dict:
    """The decode config for a bf16 cache, or (kv_dtype=FP8_DTYPE) for an fp8 one."""
    cases = [attention_case(b, c, 1, kv_dtype) for b, c in ((64, 4096), (256, 4096), (16, 4096))]
    base = dict(programs_per_sm=2, min_split_tokens=256, max_splits=64)
    shapes = [(32, 4, 2), (64, 4, 2), (64, 4, 3), (128, 4, 2), (128, 8, 3), (64, 2, 3)]
    if kv_dtype == FP8_DTYPE:  # half the bytes per tile: longer tiles, more in flight
        shapes += [(128, 4, 3), (128, 4, 4), (256, 8, 2), (256, 8, 3)]
    candidates = [DecodeConfig(block_n=n, num_warps=w, num_stages=s, **base) for n, w, s in shapes]

    def timings(config):
        run = _attention_runner(paged_decode, config, decode=True)
        return [time_per_call(case.calls(run)) for case in cases]

    best = pick(f"decode {kv_dtype}", candidates, timings)
    cases.clear()
    split_cases = [
        attention_case(b, c, 1, kv_dtype)
        for b, c in ((1, 32768), (4, 8192), (16, 4096), (16, 512), (64, 2048))
    ]
    split_candidates = [
        dataclasses.replace(best, programs_per_sm=p, min_split_tokens=m)
        for p in (1, 2, 4)
        for m in (128, 256, 512)
    ]

    def split_timings(config):
        run = _attention_runner(paged_decode, config, decode=True)
        return [time_per_call(case.calls(run)) for case in split_cases]

    return dataclasses.asdict(pick("decode split", split_candidates, split_timings))


def tune_prefill(head_dim: int, shapes: Sequence[tuple[int, int, int, int]]) -> dict:
    case = attention_case(8, 2048, 2048, torch.bfloat16, heads=(32, 8, head_dim))
    candidates = [PrefillConfig(m, n, w, s) for m, n, w, s in shapes]

    def timings(config):
        run = _attention_runner(paged_prefill, config, decode=False)
        return [time_per_call(case.calls(run))]

    return dataclasses.asdict(pick(f"prefill d{head_dim}", candidates, timings))


def tune_lora(kind: str, prefill: bool, cases_spec, shapes) -> dict:
    cases = [lora_case(p, r, t, a, prefill=prefill) for p, r, t, a in cases_spec]
    config_type = ShrinkConfig if kind == "shrink" else ExpandConfig
    candidates = [config_type(*shape) for shape in shapes]
    for case in cases:  # the expand reads what a shrink wrote
        for call in case.shrink_calls():
            call()

    def timings(config):
        calls = [
            c.shrink_calls(config) if kind == "shrink" else c.expand_calls(config) for c in cases
        ]
        return [time_per_call(case_calls) for case_calls in calls]

    regime = "prefill" if prefill else "decode"
    return dataclasses.asdict(pick(f"{kind} {regime}", candidates, timings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="where to write the table")
    parser.add_argument(
        "--only", choices=["attention", "lora"], help="sweep one family, keep the file's others"
    )
    parser.add_argument(
        "--skip-per-token", action="store_true", help="leave out the per-token LoRA kernels"
    )
    args = parser.parse_args()
    out = args.out or CONFIG_DIR / f"{device_table_name(torch.device('cuda'))}.json"
    table: dict[str, dict[str, dict]] = json.loads(out.read_text()) if out.is_file() else {}

    def record(op: str, key: str, config: dict) -> None:
        # Written after every step, so a run cut short still leaves what it found.
        table.setdefault(op, {})[key] = config
        out.write_text(json.dumps(table, indent=1) + "\n")

    if args.only != "lora":
        tune_attention(record)
    if args.only != "attention":
        tune_lora_family(record, per_token=not args.skip_per_token)
    print(f"wrote {out}")


def tune_attention(record: Callable[[str, str, dict], None]) -> None:
    decode, decode_fp8 = tune_decode(), tune_decode(FP8_DTYPE)
    for head_dim in ("64", "128"):
        record("paged_decode", head_dim, decode)
        record("paged_decode", f"{head_dim}-fp8", decode_fp8)
    prefill_shapes = {
        128: [(64, 64, 4, 3), (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 3), (128, 32, 8, 3)],
        64: [(128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 3)],
        256: [(64, 32, 4, 2), (64, 64, 8, 2), (32, 64, 4, 2), (64, 32, 8, 3)],
    }
    for head_dim, shapes in prefill_shapes.items():
        record("paged_prefill", str(head_dim), tune_prefill(head_dim, shapes))


def tune_lora_family(record: Callable[[str, str, dict], None], per_token: bool) -> None:
    decode_cases = [
        ("o", 16, 256, 256),
        ("o", 16, 256, 1),
        ("qkv", 64, 256, 64),
        ("down", 16, 256, 1),
    ]
    prefill_cases = [("o", 16, 4096, 1), ("down", 16, 4096, 8)]
    shapes = {
        ("shrink", False): [(16, 128, 4, 4, 512), (16, 256, 4, 3, 1024), (16, 128, 4, 3, 1024),
                            (16, 256, 4, 3, 512, True), (16, 256, 4, 3, 1024, True),
                            (16, 512, 4, 2, 1024, True), (16, 128, 4, 4, 512, True),
                            (16, 256, 8, 3, 2048, True)],
        ("shrink", True): [(64, 128, 4, 3, 0), (64, 128, 4, 3, 1024), (64, 128, 4, 3, 2048),
                           (32, 128, 4, 3, 2048), (64, 64, 4, 4, 1024), (128, 128, 8, 3, 1024)],
        ("expand", False): [(16, 256, 4, 1), (16, 128, 2, 1), (16, 128, 4, 1, True),
                            (16, 256, 4, 1, True), (16, 512, 4, 1, True), (16, 1024, 8, 1, True),
                            (16, 256, 2, 1, True)],
        ("expand", True): [(32, 128, 4, 1), (64, 128, 4, 1), (64, 64, 4, 1), (32, 256, 4, 1),
                           (128, 64, 4, 1)],
    }  # fmt: skip
    for (kind, prefill), candidates in shapes.items():
        cases = prefill_cases if prefill else decode_cases
        candidates = [c for c in candidates if per_token or c[-1] is not True]
        config = tune_lora(kind, prefill, cases, candidates)
        record(f"lora_{kind}", "prefill" if prefill else "decode", config)


if __name__ == "__main__":
    main()
