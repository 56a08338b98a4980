"""Model shapes (presets) and architectures that `make-model` can write.

Pure data with no heavy imports, so the CLI can list the choices without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ARCHITECTURES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
}
DENSE_ARCHITECTURES: tuple[str, ...] = ("llama", "mistral", "qwen2")
MOE_ARCHITECTURES: tuple[str, ...] = ("mixtral", "qwen2_moe")

DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")

# Llama-3.1-style scaling on the tiny preset, with a short original context so that the
# frequency bands of the scaling are all exercised by prompts of a few hundred tokens.
TINY_LLAMA3_ROPE_SCALING: dict[str, Any] = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 256,
}


@dataclass(frozen=True)
class MoEShapes:
    """The mixture-of-experts part of a preset: Mixtral's top-k of its experts, and Qwen2-MoE's
    routed experts beside one always-on shared expert."""

    num_experts: int
    expert_intermediate_size: int
    mixtral_experts_per_token: int
    qwen2_moe_experts_per_token: int
    shared_expert_intermediate_size: int


@dataclass(frozen=True)
class Preset:
    """Shapes shared by every architecture of one preset."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    default_dtype: str
    # Architecture-specific knobs, applied only to their architecture.
    llama_rope_scaling: dict[str, Any] | None
    mistral_sliding_window: int
    qwen2_tie_word_embeddings: bool
    # Experts of the MoE architectures; None for presets without them.
    moe: MoEShapes | None = None
    # The architectures this preset describes (mixtral-8x7b is Mixtral only).
    architectures: tuple[str, ...] = DENSE_ARCHITECTURES

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        vocab_size=2048,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        default_dtype="float32",
        llama_rope_scaling=TINY_LLAMA3_ROPE_SCALING,
        mistral_sliding_window=64,
        qwen2_tie_word_embeddings=True,
        moe=MoEShapes(
            num_experts=8,
            expert_intermediate_size=128,
            mixtral_experts_per_token=2,
            qwen2_moe_experts_per_token=4,
            shared_expert_intermediate_size=256,
        ),
        architectures=DENSE_ARCHITECTURES + MOE_ARCHITECTURES,
    ),
    "small": Preset(
        name="small",
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=4,
        intermediate_size=2048,
        vocab_size=32000,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        default_dtype="bfloat16",
        llama_rope_scaling=None,
        mistral_sliding_window=1024,
        qwen2_tie_word_embeddings=True,
    ),
    "llama3-8b": Preset(
        name="llama3-8b",
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        default_dtype="bfloat16",
        llama_rope_scaling=None,
        mistral_sliding_window=4096,
        qwen2_tie_word_embeddings=False,
    ),
    # Mixtral-8x7B: 46.7B parameters, about 94 GB in bfloat16.
    "mixtral-8x7b": Preset(
        name="mixtral-8x7b",
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        vocab_size=32000,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rms_norm_eps=1e-5,
        default_dtype="bfloat16",
        llama_rope_scaling=None,
        mistral_sliding_window=4096,
        qwen2_tie_word_embeddings=False,
        moe=MoEShapes(
            num_experts=8,
            expert_intermediate_size=14336,
            mixtral_experts_per_token=2,
            qwen2_moe_experts_per_token=2,
            shared_expert_intermediate_size=0,
        ),
        architectures=("mixtral",),
    ),
}


@dataclass(frozen=True)
class ModelSpec:
    """One preset resolved for one architecture: everything needed to write the model."""

    preset: Preset
    arch: str
    dtype: str
    tie_word_embeddings: bool
    attention_bias: bool
    rope_scaling: dict[str, Any] | None
    sliding_window: int | None

    @property
    def architecture_class(self) -> str:
        return ARCHITECTURES[self.arch]

    @property
    def is_moe(self) -> bool:
        return self.arch in MOE_ARCHITECTURES

    @property
    def experts_per_token(self) -> int:
        """Experts each token is routed to (MoE architectures only)."""
        moe = self.preset.moe
        if self.arch == "mixtral":
            return moe.mixtral_experts_per_token
        return moe.qwen2_moe_experts_per_token


def resolve_spec(preset: str, arch: str = "llama", dtype: str | None = None) -> ModelSpec:
    """Validates the names and returns the full description of the model to write."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    shapes = PRESETS[preset]
    if arch not in shapes.architectures:
        raise ValueError(
            f"preset {preset!r} has no {arch!r} variant; it describes "
            f"{', '.join(shapes.architectures)}"
        )
    dtype = shapes.default_dtype if dtype is None else dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return ModelSpec(
        preset=shapes,
        arch=arch,
        dtype=dtype,
        tie_word_embeddings=arch == "qwen2" and shapes.qwen2_tie_word_embeddings,
        attention_bias=arch in ("qwen2", "qwen2_moe"),
        rope_scaling=shapes.llama_rope_scaling if arch == "llama" else None,
        sliding_window=shapes.mistral_sliding_window if arch == "mistral" else None,
    )
