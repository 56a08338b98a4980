"""`make_model`: writes a random-weight Hugging Face model folder.

Weights are written shard by shard, so peak memory is about one shard (plus the float32 draft
of its largest tensor), whatever the size of the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from loraplex.modelgen.hf_config import generation_config, model_config
from loraplex.modelgen.presets import ModelSpec, resolve_spec
from loraplex.modelgen.tokenizer import TOKENIZER_FILES, build_tokenizer, save_tokenizer
from loraplex.modelgen.weights import TORCH_DTYPES, TensorSpec, generate_tensor, tensor_specs

# The shard size transformers uses by default ("5GB").
DEFAULT_MAX_SHARD_BYTES = 5_000_000_000

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILES = ("config.json", "generation_config.json")


def plan_shards(tensors: list[TensorSpec], bytes_per_element: int, max_shard_bytes: int):
    """Groups tensors in order into shards of at most `max_shard_bytes`.

    A tensor larger than the limit gets a shard of its own, as transformers does.
    """
    shards: list[list[TensorSpec]] = [[]]
    shard_bytes = 0
    for tensor in tensors:
        size = tensor.numel * bytes_per_element
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(tensor)
        shard_bytes += size
    return shards


def shard_file_names(num_shards: int) -> list[str]:
    if num_shards == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{num_shards:05d}.safetensors" for i in range(1, num_shards + 1)]


def make_model(
    preset: str,
    out_dir: str | Path,
    arch: str = "llama",
    seed: int = 0,
    dtype: str | None = None,
    device: str = "cpu",
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Writes config, generation config, tokenizer and random weights into `out_dir`.

    The same (preset, arch, seed, dtype) on the same kind of device gives byte-identical files;
    the CPU and CUDA random streams differ, so weights made on CUDA differ from CPU ones.
    `out_dir` must be missing or empty unless `overwrite` is set, in which case only the files
    this function writes (and stale weight shards) are replaced. Returns `out_dir`.
    """
    spec = resolve_spec(preset, arch, dtype)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    torch_device = _check_device(device)
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)

    _write_json(out / "config.json", model_config(spec))
    _write_json(out / "generation_config.json", generation_config())
    save_tokenizer(
        build_tokenizer(spec.preset.vocab_size), out, spec.preset.max_position_embeddings
    )
    _write_weights(spec, seed, torch_device, out, max_shard_bytes)
    return out


def _check_device(device: str) -> torch.device:
    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"invalid device {device!r}: {exc}") from exc
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if torch_device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return torch_device


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"output folder {out} is not empty (overwrite it with --force)")
        owned = [*CONFIG_FILES, *TOKENIZER_FILES, SINGLE_FILE, INDEX_FILE]
        stale = [out / name for name in owned] + list(out.glob("model-*-of-*.safetensors"))
        for path in stale:
            path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _write_weights(
    spec: ModelSpec, seed: int, device: torch.device, out: Path, max_shard_bytes: int
) -> None:
    dtype = TORCH_DTYPES[spec.dtype]
    bytes_per_element = torch.empty((), dtype=dtype).element_size()
    shards = plan_shards(tensor_specs(spec), bytes_per_element, max_shard_bytes)
    names = shard_file_names(len(shards))
    weight_map: dict[str, str] = {}
    total_bytes = 0
    for file_name, shard in zip(names, shards, strict=True):
        tensors = {t.name: generate_tensor(t, seed, dtype, device) for t in shard}
        save_file(tensors, str(out / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file_name))
        total_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": total_bytes},
            "weight_map": dict(sorted(weight_map.items())),
        }
        _write_json(out / INDEX_FILE, index)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
