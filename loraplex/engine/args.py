"""User-facing engine keywords (vLLM's names) and their translation into `EngineConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.config import (
    CacheConfig,
    EngineConfig,
    LoRAConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    read_model_folder,
    resolve_device,
    resolve_dtype,
)
from loraplex.engine.layers.fp8 import is_fp8_checkpoint


@dataclass
class EngineArgs:
    model: str
    tokenizer: str | None = None
    dtype: str = "auto"
    seed: int = 0
    device: str = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    kv_cache_dtype: str = "auto"
    num_gpu_blocks_override: int | None = None
    cpu_kv_cache_bytes: int = 1 << 30
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    async_scheduling: bool = True
    quantization: str | None = None
    enforce_eager: bool = False
    trust_remote_code: bool = False
    enable_lora: bool = False
    max_loras: int = 4
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None

    def create_engine_config(self) -> EngineConfig:
        from transformers import AutoConfig

        raw = read_model_folder(self.model)
        try:
            hf_config = AutoConfig.from_pretrained(
                self.model, trust_remote_code=self.trust_remote_code
            )
        except (ValueError, KeyError) as exc:
            raise ValueError(f"cannot read the model config in {self.model!r}: {exc}") from exc
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, raw.get("torch_dtype") or raw.get("dtype"), device)
        quantization = self.quantization
        if quantization is None and is_fp8_checkpoint(hf_config):
            quantization = "fp8"  # the weights are stored in fp8: serve them as such
        model_limit = getattr(hf_config, "max_position_embeddings", None) or 2048
        max_model_len = self.max_model_len or model_limit
        model = ModelConfig(
            model=self.model,
            tokenizer=self.tokenizer or self.model,
            hf_config=hf_config,
            dtype=dtype,
            max_model_len=max_model_len,
            device=device,
            seed=self.seed,
            quantization=quantization,
            enforce_eager=self.enforce_eager,
            trust_remote_code=self.trust_remote_code,
        )
        batched_tokens = self.max_num_batched_tokens or max(4096, self.max_num_seqs)
        scheduler = SchedulerConfig(
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=batched_tokens,
            max_model_len=max_model_len,
            async_scheduling=self.async_scheduling,
        )
        cache = CacheConfig(
            block_size=self.block_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            cache_dtype=self.kv_cache_dtype,
            cpu_kv_cache_bytes=self.cpu_kv_cache_bytes,
            num_blocks_override=self.num_gpu_blocks_override,
        )
        lora = None
        if self.enable_lora:
            lora = LoRAConfig(
                max_loras=self.max_loras,
                max_lora_rank=self.max_lora_rank,
                max_cpu_loras=self.max_cpu_loras,
            )
        return EngineConfig(
            model=model,
            cache=cache,
            parallel=ParallelConfig(tensor_parallel_size=self.tensor_parallel_size),
            scheduler=scheduler,
            lora=lora,
        )
