"""Engine configuration: frozen dataclasses, each validated when built.

The engine receives only these objects; it never reads the environment. `EngineArgs`
(engine/args.py) turns the user-facing keywords into them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_dtype(
    dtype: str | torch.dtype, config_dtype: str | None, device: torch.device
) -> torch.dtype:
    """ "auto" takes the checkpoint's dtype; fp16 on CPU becomes fp32 (CPUs lack fast fp16)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        resolved = _DTYPES.get(str(config_dtype).replace("torch.", ""), torch.float32)
        if device.type == "cpu" and resolved == torch.float16:
            return torch.float32
        return resolved
    if dtype not in _DTYPES:
        raise ValueError(
            f"dtype={dtype!r} is not supported; use 'auto' or one of {sorted(_DTYPES)}"
        )
    return _DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but no CUDA GPU is visible")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device={device!r} is not supported; use 'auto', 'cpu' or 'cuda'")
    return torch.device(device)


def read_model_folder(model: str) -> dict[str, Any]:
    """The checkpoint's config.json, after checking the folder holds a loadable model."""
    path = Path(model)
    if not path.is_dir():
        raise ValueError(f"model {model!r} is not a folder (models are local Hugging Face folders)")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"model folder {model!r} has no config.json")
    if not any(path.glob("*.safetensors")):
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        hint = f" ({', '.join(pickled)} found: convert it to safetensors)" if pickled else ""
        raise ValueError(f"model folder {model!r} has no *.safetensors weights{hint}")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_file} is not valid JSON: {exc}") from exc


@dataclass(frozen=True)
class ModelConfig:
    model: str  # local Hugging Face folder
    tokenizer: str  # folder holding the tokenizer files (defaults to the model's)
    hf_config: Any  # transformers.PretrainedConfig of the checkpoint
    dtype: torch.dtype  # dtype of weights and activations
    max_model_len: int  # longest prompt + output a sequence may have
    device: torch.device
    seed: int = 0
    quantization: str | None = None
    enforce_eager: bool = False
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        limit = getattr(self.hf_config, "max_position_embeddings", None)
        if self.max_model_len < 1:
            raise ValueError(f"max_model_len must be at least 1, got {self.max_model_len}")
        if limit is not None and self.max_model_len > limit:
            raise ValueError(
                f"max_model_len={self.max_model_len} is longer than the model's "
                f"max_position_embeddings={limit}"
            )
        if self.quantization not in (None, "fp8"):
            raise ValueError(
                f"quantization={self.quantization!r} is not supported; use None or 'fp8'"
            )

    @property
    def head_dim(self) -> int:
        cfg = self.hf_config
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        cfg = self.hf_config
        return getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads

    @property
    def num_layers(self) -> int:
        return self.hf_config.num_hidden_layers

    @property
    def vocab_size(self) -> int:
        return self.hf_config.vocab_size


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16  # tokens per KV-cache block
    gpu_memory_utilization: float = 0.9  # share of the GPU's memory the engine may hold
    cache_dtype: str = "auto"  # "auto" (model dtype) or "fp8"
    cpu_kv_cache_bytes: int = 1 << 30  # KV-cache budget when running on CPU
    num_blocks_override: int | None = None  # fixed block count (tests force preemption with it)

    def __post_init__(self) -> None:
        if self.block_size not in (8, 16, 32, 64, 128):
            raise ValueError(f"block_size must be one of 8, 16, 32, 64, 128, got {self.block_size}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.cache_dtype not in ("auto", "fp8", "fp8_e4m3"):
            raise ValueError(
                f"kv_cache_dtype={self.cache_dtype!r} is not supported; use 'auto' or 'fp8'"
            )
        if self.num_blocks_override is not None and self.num_blocks_override < 1:
            raise ValueError(
                f"num_gpu_blocks_override must be positive, got {self.num_blocks_override}"
            )


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        if self.tensor_parallel_size < 1:
            raise ValueError(
                f"tensor_parallel_size must be at least 1, got {self.tensor_parallel_size}"
            )


@dataclass(frozen=True)
class LoRAConfig:
    max_loras: int = 4  # adapters resident in GPU slots at once
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # adapters kept in CPU memory (LRU); default max_loras

    def __post_init__(self) -> None:
        if self.max_loras < 1:
            raise ValueError(f"max_loras must be at least 1, got {self.max_loras}")
        if self.max_lora_rank < 1 or self.max_lora_rank > 256:
            raise ValueError(f"max_lora_rank must be in [1, 256], got {self.max_lora_rank}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras ({self.max_cpu_loras}) must be at least "
                f"max_loras ({self.max_loras})"
            )


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256  # sequences in one batch
    max_num_batched_tokens: int = 4096  # tokens (prefill chunks + decodes) in one step
    max_model_len: int = 2048
    # Launch step n+1 before the host has read step n's tokens (they feed the next step on the
    # device), so detokenizing, stop checks and scheduling overlap the GPU's work.
    async_scheduling: bool = True

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens must be at least 1, got {self.max_num_batched_tokens}"
            )


def check_tensor_parallel(hf_config: Any, size: int, device: torch.device) -> None:
    """Raise ValueError unless the model's heads and MLP split evenly over `size` ranks and,
    on CUDA, `size` GPUs (one per rank, from `device`'s index on) are visible."""
    if size == 1:
        return
    heads = hf_config.num_attention_heads
    kv_heads = getattr(hf_config, "num_key_value_heads", None) or heads
    if heads % size:
        raise ValueError(
            f"num_attention_heads={heads} is not divisible by tensor_parallel_size={size}"
        )
    if kv_heads % size and size % kv_heads:
        raise ValueError(
            f"num_key_value_heads={kv_heads} and tensor_parallel_size={size}: one must divide "
            "the other (KV heads are split, or replicated when fewer than ranks)"
        )
    # Every MLP (dense, each expert, the shared expert) is split along its intermediate size.
    for name in ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size"):
        value = getattr(hf_config, name, None)
        if value and value % size:
            raise ValueError(f"{name}={value} is not divisible by tensor_parallel_size={size}")
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        first = device.index or 0
        if first + size > visible:
            raise ValueError(
                f"tensor_parallel_size={size} needs {size} GPUs from cuda:{first} on, "
                f"but only {visible} GPUs are visible"
            )


@dataclass(frozen=True)
class EngineConfig:
    model: ModelConfig
    cache: CacheConfig = field(default_factory=CacheConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    lora: LoRAConfig | None = None  # None: LoRA disabled

    def __post_init__(self) -> None:
        check_tensor_parallel(
            self.model.hf_config, self.parallel.tensor_parallel_size, self.model.device
        )
