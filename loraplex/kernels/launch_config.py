"""Block sizes and launch parameters per GPU, read from `configs/*.json`.

`configs/default.json` holds safe values for every kernel; a file named after the GPU (its
`torch.cuda.get_device_name()` with every run of non-alphanumerics turned into `_`, for example
`NVIDIA_H200.json`) overrides the entries it tunes. Tables are read once per process.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any

import torch

DEFAULT_TABLE = "default"


def device_table_name(device: torch.device) -> str:
    """The config file stem for `device`: `default` on CPU, the sanitised GPU name on CUDA."""
    if device.type != "cuda":
        return DEFAULT_TABLE
    return re.sub(r"[^0-9A-Za-z]+", "_", torch.cuda.get_device_name(device)).strip("_")


@functools.cache
def _read_table(name: str) -> dict[str, Any]:
    path = resources.files(__package__).joinpath("configs", f"{name}.json")
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


@functools.cache
def _merged_table(name: str) -> dict[str, dict[str, dict[str, Any]]]:
    merged = {op: dict(entries) for op, entries in _read_table(DEFAULT_TABLE).items()}
    for op, entries in _read_table(name).items():
        for key, values in entries.items():
            merged.setdefault(op, {})[key] = {**merged.get(op, {}).get(key, {}), **values}
    return merged


def launch_config(op: str, key: str, device: torch.device) -> dict[str, Any]:
    """The launch parameters of kernel `op` for the case `key` (a regime or a head-dim bucket)."""
    entries = _merged_table(device_table_name(device)).get(op, {})
    if key not in entries:
        raise KeyError(f"no launch config for {op!r} / {key!r}; known: {sorted(entries)}")
    return dict(entries[key])


def head_dim_bucket(op: str, head_dim: int, device: torch.device) -> str:
    """The smallest head-dim key of `op`'s table that is at least `head_dim`."""
    entries = _merged_table(device_table_name(device)).get(op, {})
    keys = sorted(int(k) for k in entries if k.isdigit())  # not variants such as "128-fp8"
    for size in keys:
        if size >= head_dim:
            return str(size)
    raise ValueError(f"head_dim {head_dim} is larger than any configured size {keys} for {op}")


@functools.cache
def multiprocessor_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of `device`; a small fixed count on CPU (the interpreter)."""
    if device.type != "cuda":
        return 4
    index = device.index if device.index is not None else torch.cuda.current_device()
    return multiprocessor_count(index)


def for_element_size(values: dict[str, Any], element_size: int, tile_key: str) -> dict[str, Any]:
    """`values` fitted to inputs of `element_size` bytes. The tables are tuned for 2-byte
    (fp16 / bf16) inputs; float32 tiles take twice the shared memory and, at the tuned sizes,
    more than a Hopper SM has, so they get half the `tile_key` extent and one pipeline stage
    fewer."""
    if element_size <= 2:
        return values
    fitted = dict(values)
    fitted[tile_key] = max(16, values[tile_key] // 2)
    if "num_stages" in values:
        fitted["num_stages"] = max(1, values["num_stages"] - 1)
    return fitted
