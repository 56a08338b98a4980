"""The PEFT LoRA adapter format: what we accept, checked before anything is stored or loaded.

An adapter is `adapter_config.json` plus `adapter_model.safetensors`, as written by PEFT's
`save_pretrained(safe_serialization=True)`. Validation reads the config and the safetensors
header only (never tensor data, never a pickle) and checks every tensor against the shapes of the
base model, so that the engine can later load an accepted adapter without further checks.

Depends on the standard library only (torch solely inside `load_adapter_tensors`), so that the
engine's loader can import it on machines without the platform's packages.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraplex.adapter_format.safetensors_header import (
    SafetensorsHeaderError,
    TensorInfo,
    read_safetensors_index,
)

if TYPE_CHECKING:
    import torch

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_CONFIG_BYTES = 1024 * 1024
# Supported target modules and the block each lives in (Llama-family decoder layers).
SUPPORTED_TARGET_MODULES = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}
# Module names that exist only in mixture-of-experts blocks: routed experts (Mixtral's w1/w2/w3
# and block_sparse_moe, Qwen2-MoE's experts), the shared expert and its gate, and the router.
EXPERT_MODULE_PARTS = frozenset(
    {"block_sparse_moe", "experts", "shared_expert", "shared_expert_gate", "gate", "w1", "w2", "w3"}
)
EXPERT_REFUSAL = (
    "expert weights are not supported yet: an adapter of a mixture-of-experts model may target "
    "its attention projections (q_proj, k_proj, v_proj, o_proj)"
)
TENSOR_NAME = re.compile(
    r"base_model\.model\.model\.layers\.(0|[1-9][0-9]*)\.(self_attn|mlp)\.(\w+)\.lora_(A|B)\.weight"
)
# Config options that change what the weights mean; a non-empty value is refused.
UNSUPPORTED_OPTIONS = {
    "modules_to_save": "the adapter would replace whole base-model modules",
    "rank_pattern": "per-module ranks are not supported",
    "alpha_pattern": "per-module alphas are not supported",
    "lora_bias": "LoRA bias terms are not supported",
    "fan_in_fan_out": "transposed (Conv1D-style) weights are not supported",
    "layer_replication": "layer replication is not supported",
    "trainable_token_indices": "trainable token embeddings are not supported",
    "target_parameters": "targeting raw parameters is not supported",
}
SAVE_AS_SAFETENSORS = (
    "save the adapter as safetensors: save_pretrained(..., safe_serialization=True)"
)


class AdapterFormatError(ValueError):
    """The uploaded files are not an adapter we accept; the message says which rule failed."""


@dataclass(frozen=True)
class BaseModelShape:
    """The dimensions of the base model that a LoRA's tensors must fit."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_hidden_layers: int
    # Layers whose MLP is a mixture of experts (its gate/up/down are not LoRA targets).
    moe_layers: frozenset[int] = frozenset()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BaseModelShape:
        """Read a Hugging Face `config.json` dict (Llama-family field names, and the expert
        fields of Mixtral and Qwen2-MoE)."""
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            num_layers = int(config["num_hidden_layers"])
            return cls(
                hidden_size=hidden,
                intermediate_size=int(config["intermediate_size"]),
                num_attention_heads=heads,
                num_key_value_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                num_hidden_layers=num_layers,
                moe_layers=_moe_layers(config, num_layers),
            )
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"base model config.json lacks a usable field: {exc!r}") from exc

    @classmethod
    def from_config_file(cls, path: Path) -> BaseModelShape:
        return cls.from_config(json.loads(Path(path).read_text(encoding="utf-8")))

    def features(self, module: str) -> tuple[int, int]:
        """(in_features, out_features) of a target module."""
        attention = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        return {
            "q_proj": (self.hidden_size, attention),
            "k_proj": (self.hidden_size, kv),
            "v_proj": (self.hidden_size, kv),
            "o_proj": (attention, self.hidden_size),
            "gate_proj": (self.hidden_size, self.intermediate_size),
            "up_proj": (self.hidden_size, self.intermediate_size),
            "down_proj": (self.intermediate_size, self.hidden_size),
        }[module]


def _moe_layers(config: Mapping[str, Any], num_layers: int) -> frozenset[int]:
    if int(config.get("num_local_experts") or 0) > 0:  # Mixtral: every layer
        return frozenset(range(num_layers))
    if int(config.get("num_experts") or 0) > 0:  # Qwen2-MoE: a grid of layers, minus dense ones
        step = int(config.get("decoder_sparse_step") or 1)
        dense = {int(i) for i in config.get("mlp_only_layers") or []}
        return frozenset(i for i in range(num_layers) if i not in dense and (i + 1) % step == 0)
    return frozenset()


def _names_expert_module(path: str) -> bool:
    return not EXPERT_MODULE_PARTS.isdisjoint(re.split(r"\W+", path))


@dataclass(frozen=True)
class LoraTensorPair:
    layer: int  # decoder layer index
    module: str  # one of SUPPORTED_TARGET_MODULES
    lora_a: str  # tensor name, shape [rank, in_features]
    lora_b: str  # tensor name, shape [out_features, rank]


@dataclass(frozen=True)
class LoraAdapterSpec:
    """A validated adapter: what the registry records and the engine's loader consumes."""

    rank: int
    alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...]  # modules that carry weights, sorted
    pairs: tuple[LoraTensorPair, ...]  # one per (layer, module), sorted
    tensors: dict[str, TensorInfo]  # safetensors index: name -> dtype, shape, byte range

    @property
    def scaling(self) -> float:
        """The factor PEFT applies to B @ A: alpha / r, or alpha / sqrt(r) for rsLoRA."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


@dataclass(frozen=True)
class LoraConfigFields:
    rank: int
    alpha: float
    use_rslora: bool
    declared_modules: frozenset[str] | None  # None when target_modules is a regex


def is_pickle_filename(filename: str) -> bool:
    return filename.lower().endswith(PICKLE_SUFFIXES)


def pickle_refusal(filename: str) -> AdapterFormatError:
    return AdapterFormatError(
        f"{filename!r} is a pickle-based format, which is never loaded here; {SAVE_AS_SAFETENSORS}"
    )


def parse_lora_config(raw: bytes, *, max_rank: int | None) -> LoraConfigFields:
    """Check `adapter_config.json` bytes against the rules of a LoRA we can serve."""
    if len(raw) > MAX_CONFIG_BYTES:
        raise AdapterFormatError(f"{ADAPTER_CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterFormatError(f"{ADAPTER_CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{ADAPTER_CONFIG_FILE} must be a JSON object")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise AdapterFormatError(
            f"{ADAPTER_CONFIG_FILE} has peft_type {peft_type!r}; only LORA adapters are supported"
        )
    if config.get("use_dora"):
        raise AdapterFormatError("DoRA adapters (use_dora=true) are not supported")
    if config.get("bias", "none") != "none":
        raise AdapterFormatError(
            f"bias={config.get('bias')!r} is not supported: train with bias='none'"
        )
    for option, reason in UNSUPPORTED_OPTIONS.items():
        if config.get(option):
            if option == "target_parameters" and _names_expert_module(str(config[option])):
                reason = EXPERT_REFUSAL
            raise AdapterFormatError(f"{option}={config[option]!r} is not supported: {reason}")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterFormatError(
            f"{ADAPTER_CONFIG_FILE} r must be a positive integer, got {rank!r}"
        )
    if max_rank is not None and rank > max_rank:
        raise AdapterFormatError(f"rank r={rank} exceeds the platform maximum of {max_rank}")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not 0 < alpha < math.inf:
        raise AdapterFormatError(f"lora_alpha must be a positive number, got {alpha!r}")
    use_rslora = config.get("use_rslora", False)
    if not isinstance(use_rslora, bool):
        raise AdapterFormatError(f"use_rslora must be true or false, got {use_rslora!r}")
    return LoraConfigFields(rank, float(alpha), use_rslora, _declared_modules(config))


def _declared_modules(config: dict[str, Any]) -> frozenset[str] | None:
    targets = config.get("target_modules")
    if targets == "all-linear":
        return frozenset(SUPPORTED_TARGET_MODULES)
    if isinstance(targets, str) and targets:
        return None  # a regex over module paths; the tensor names are checked instead
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise AdapterFormatError("target_modules must be a non-empty list of module names")
    unsupported = sorted(set(targets) - set(SUPPORTED_TARGET_MODULES))
    experts = [target for target in unsupported if _names_expert_module(target)]
    if experts:
        raise AdapterFormatError(f"target module(s) {experts}: {EXPERT_REFUSAL}")
    if unsupported:
        raise AdapterFormatError(
            f"target module(s) {unsupported} not supported; supported: "
            f"{', '.join(SUPPORTED_TARGET_MODULES)}"
        )
    return frozenset(targets)


def read_weights_index(weights_path: Path) -> dict[str, TensorInfo]:
    """The bounded safetensors header, with a clear refusal for pickles under the wrong name."""
    try:
        return read_safetensors_index(weights_path).tensors
    except SafetensorsHeaderError as exc:
        with open(weights_path, "rb") as stream:
            magic = stream.read(4)
        # Pickle protocol 2-5 starts with 0x80 <proto>; torch.save's default format is a zip.
        if (magic[:1] == b"\x80" and magic[1:2] in b"\x02\x03\x04\x05") or magic == b"PK\x03\x04":
            raise AdapterFormatError(
                f"{ADAPTER_WEIGHTS_FILE} holds a pickle (PyTorch .bin/.pt) file, which is never "
                f"loaded here; {SAVE_AS_SAFETENSORS}"
            ) from exc
        raise AdapterFormatError(f"{ADAPTER_WEIGHTS_FILE}: {exc}") from exc


def validate_adapter_files(
    config_path: Path,
    weights_path: Path,
    *,
    base: BaseModelShape | None,
    max_rank: int | None,
) -> LoraAdapterSpec:
    """Validate a config + weights pair; `base=None` checks structure but not the model's shapes."""
    fields = parse_lora_config(Path(config_path).read_bytes(), max_rank=max_rank)
    tensors = read_weights_index(Path(weights_path))
    halves: dict[tuple[int, str], dict[str, str]] = {}
    for name, info in tensors.items():
        layer, module, half = _parse_tensor_name(name, fields, base)
        _check_tensor_shape(name, info, module, half, fields.rank, base)
        halves.setdefault((layer, module), {})[half] = name
    if not halves:
        raise AdapterFormatError(f"{ADAPTER_WEIGHTS_FILE} holds no LoRA tensors")
    pairs = []
    for (layer, module), found in sorted(halves.items()):
        missing = {"A", "B"} - set(found)
        if missing:
            raise AdapterFormatError(
                f"layer {layer} {module} has lora_{set(found).pop()} but no lora_{missing.pop()}"
            )
        pairs.append(LoraTensorPair(layer, module, found["A"], found["B"]))
    return LoraAdapterSpec(
        rank=fields.rank,
        alpha=fields.alpha,
        use_rslora=fields.use_rslora,
        target_modules=tuple(sorted({pair.module for pair in pairs})),
        pairs=tuple(pairs),
        tensors=tensors,
    )


def _parse_tensor_name(
    name: str, fields: LoraConfigFields, base: BaseModelShape | None
) -> tuple[int, str, str]:
    if "lora_magnitude_vector" in name:
        raise AdapterFormatError(f"tensor {name!r} is a DoRA magnitude; DoRA is not supported")
    if _names_expert_module(name.removeprefix("base_model.model.")):
        raise AdapterFormatError(f"tensor {name!r}: {EXPERT_REFUSAL}")
    match = TENSOR_NAME.fullmatch(name)
    if match is None:
        raise AdapterFormatError(
            f"unexpected tensor {name!r}: expected "
            "base_model.model.model.layers.<i>.<self_attn|mlp>.<module>.lora_<A|B>.weight"
        )
    layer, block, module, half = int(match[1]), match[2], match[3], match[4]
    if SUPPORTED_TARGET_MODULES.get(module) != block:
        raise AdapterFormatError(
            f"tensor {name!r} targets {block}.{module}, which is not a supported target module"
        )
    if fields.declared_modules is not None and module not in fields.declared_modules:
        raise AdapterFormatError(
            f"tensor {name!r} is for {module}, which target_modules in {ADAPTER_CONFIG_FILE} "
            "does not list"
        )
    if base is not None and layer >= base.num_hidden_layers:
        raise AdapterFormatError(
            f"tensor {name!r} is for layer {layer} but the base model has "
            f"{base.num_hidden_layers} layers"
        )
    if base is not None and block == "mlp" and layer in base.moe_layers:
        raise AdapterFormatError(
            f"tensor {name!r} is for the MLP of layer {layer}, a mixture of experts; "
            f"{EXPERT_REFUSAL}"
        )
    return layer, module, half


def _check_tensor_shape(
    name: str, info: TensorInfo, module: str, half: str, rank: int, base: BaseModelShape | None
) -> None:
    if len(info.shape) != 2:
        raise AdapterFormatError(f"tensor {name!r} must be 2-D, has shape {list(info.shape)}")
    tensor_rank = info.shape[0] if half == "A" else info.shape[1]
    if tensor_rank != rank:
        raise AdapterFormatError(
            f"tensor {name!r} has rank {tensor_rank} (shape {list(info.shape)}) but "
            f"{ADAPTER_CONFIG_FILE} says r={rank}"
        )
    if base is None:
        return
    in_features, out_features = base.features(module)
    expected = (rank, in_features) if half == "A" else (out_features, rank)
    if info.shape != expected:
        raise AdapterFormatError(
            f"tensor {name!r} has shape {list(info.shape)}, expected {list(expected)} for "
            f"{module} of the base model (hidden_size={base.hidden_size}, "
            f"intermediate_size={base.intermediate_size})"
        )


def load_adapter_tensors(weights_path: Path) -> dict[str, torch.Tensor]:
    """Load the tensors of a validated safetensors file onto the CPU (no pickle involved)."""
    from safetensors.torch import load_file

    return load_file(str(weights_path), device="cpu")
