"""Safetensors checkpoint -> model parameters, one tensor at a time.

Checkpoint names follow transformers; fused modules (qkv_proj, gate_up_proj) receive their
slices through each parameter's `weight_loader`, which also takes this rank's shard.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

# Buffers some checkpoints carry that the engine recomputes, and FP8 checkpoints' static
# activation scales (activations are scaled per token at run time instead).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".input_scale")


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


def load_weights(model: nn.Module, model_dir: str | Path) -> None:
    params = dict(model.named_parameters())
    packed = getattr(model, "packed_modules_mapping", {})
    loaded: set[str] = set()
    for name, tensor in iterate_tensors(model_dir):
        if name.endswith(_IGNORED_SUFFIXES):
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


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"shape {tuple(loaded.shape)} does not fit {tuple(param.shape)}")
    param.data.copy_(loaded)


def _target(name: str, packed: dict[str, tuple[str, object]]) -> tuple[str, object]:
    for checkpoint_part, (fused, shard_id) in packed.items():
        if f".{checkpoint_part}." in name:
            return name.replace(f".{checkpoint_part}.", f".{fused}."), shard_id
    return name, None
