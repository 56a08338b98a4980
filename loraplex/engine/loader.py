"""Safetensors checkpoint -> model parameters, one tensor at a time.

Checkpoint names follow transformers; fused modules (qkv_proj, gate_up_proj) receive their
slices through each parameter's `weight_loader`, which also takes this rank's shard.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
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


def iterate_tensors(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    for path in checkpoint_files(model_dir):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)


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
