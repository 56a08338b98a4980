"""Safetensors checkpoint -> model parameters, one tensor at a time.

Checkpoint names follow transformers; fused modules (qkv_proj, gate_up_proj) receive their
slices through each parameter's `weight_loader`, which also takes this rank's shard. Tensors
are views of the memory-mapped file, so a rank reads from disk only the bytes of its shard
(and no tensor is copied on the host before it goes to its parameter).
"""

from __future__ import annotations

import json
import math
import mmap
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

# Buffers some checkpoints carry that the engine recomputes, and FP8 checkpoints' static
# activation scales (activations are scaled per token at run time instead).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".input_scale")

# Per-layer FP8 KV-cache scales under the names FP8 quantizers write them, and which of the
# key / value scales each one sets.
_KV_SCALE_SUFFIXES = {
    ".self_attn.k_scale": ("k",),
    ".self_attn.v_scale": ("v",),
    ".self_attn.kv_scale": ("k", "v"),
    ".self_attn.k_proj.output_scale": ("k",),
    ".self_attn.v_proj.output_scale": ("v",),
}
_LAYER_INDEX = re.compile(r"\blayers\.(\d+)\.")


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    folder = Path(model_dir)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({folder / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"{index} names missing shard files: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"model folder {str(model_dir)!r} has no *.safetensors weights")
    return files


# safetensors dtype names -> torch dtypes
_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
    "U16": torch.uint16, "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64,
    "U64": torch.uint64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


def iterate_tensors(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every checkpoint tensor, each a view of its file mapped in memory
    (copy-on-write, so nothing reaches the file): pages are read when a loader touches them."""
    for path in checkpoint_files(model_dir):
        with open(path, "rb") as stream:
            (header_length,) = struct.unpack("<Q", stream.read(8))
            header = json.loads(stream.read(header_length))
            data_offset = 8 + header_length
            size = path.stat().st_size
            mapped = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        header.pop("__metadata__", None)
        for name, entry in header.items():
            yield name, _mapped_tensor(mapped, data_offset, size, entry, f"{path.name}: {name!r}")


def _mapped_tensor(mapped, data_offset: int, size: int, entry: dict, where: str) -> torch.Tensor:
    dtype = _DTYPES.get(entry["dtype"])
    if dtype is None:
        raise ValueError(f"{where} has unsupported dtype {entry['dtype']}")
    start, end = (data_offset + offset for offset in entry["data_offsets"])
    if not data_offset <= start <= end <= size:
        raise ValueError(f"{where} lies outside its file ({size} bytes)")
    if end == start:
        raw = torch.empty(0, dtype=torch.uint8)
    else:
        raw = torch.frombuffer(mapped, dtype=torch.uint8, count=end - start, offset=start)
    return raw.view(dtype).view(entry["shape"])


def load_weights(model: nn.Module, model_dir: str | Path) -> dict[int, dict[str, float]]:
    """Load every parameter; returns the checkpoint's FP8 KV-cache scales as
    {layer index: {"k": scale, "v": scale}} (empty when it has none)."""
    params = dict(model.named_parameters())
    packed = getattr(model, "packed_modules_mapping", {})
    loaded: set[str] = set()
    kv_scales: dict[int, dict[str, float]] = {}
    for name, tensor in iterate_tensors(model_dir):
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        if _record_kv_scale(name, tensor, kv_scales):
            continue
        target, shard_id = _target(name, packed)
        if target == "lm_head.weight" and target not in params:
            continue  # tied to the embedding, which loads it
        if target not in params:
            raise ValueError(f"checkpoint tensor {name!r} has no place in {type(model).__name__}")
        param = params[target]
        weight_loader = getattr(param, "weight_loader", default_weight_loader)
        try:
            if shard_id is None:
                weight_loader(param, tensor)
            else:
                weight_loader(param, tensor, shard_id)
        except ValueError as exc:
            raise ValueError(f"checkpoint tensor {name!r}: {exc}") from exc
        loaded.add(target)
    missing = sorted(set(params) - loaded)
    if missing:
        raise ValueError(
            f"checkpoint in {str(model_dir)!r} lacks weights: {', '.join(missing[:8])}"
        )
    return kv_scales


def _record_kv_scale(name: str, tensor: torch.Tensor, scales: dict[int, dict[str, float]]) -> bool:
    """Keep `name` in `scales` if it is a KV-cache scale; True if it was one."""
    kinds = next((k for suffix, k in _KV_SCALE_SUFFIXES.items() if name.endswith(suffix)), None)
    if kinds is None:
        return False
    layer = _LAYER_INDEX.search(name)
    if layer is None:
        raise ValueError(f"checkpoint tensor {name!r}: a KV-cache scale outside any layer")
    if tensor.numel() != 1:
        raise ValueError(
            f"checkpoint tensor {name!r}: KV-cache scales must be one value per layer, got "
            f"shape {tuple(tensor.shape)} (per-head scales are not supported)"
        )
    value = float(tensor.float().reshape(()))
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"checkpoint tensor {name!r}: a KV-cache scale must be > 0, got {value}")
    for kind in kinds:
        scales.setdefault(int(layer.group(1)), {})[kind] = value
    return True


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"shape {tuple(loaded.shape)} does not fit {tuple(param.shape)}")
    param.data.copy_(loaded)


def _target(name: str, packed: dict[str, tuple[str, object]]) -> tuple[str, object]:
    for checkpoint_part, (fused, shard_id) in packed.items():
        if f".{checkpoint_part}." in name:
            return name.replace(f".{checkpoint_part}.", f".{fused}."), shard_id
        if name.endswith(f".{checkpoint_part}"):  # a tensor named after its module (no .weight)
            return name[: -len(checkpoint_part)] + fused, shard_id
    return name, None
