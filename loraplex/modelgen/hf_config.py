"""config.json and generation_config.json for a resolved model spec."""

from __future__ import annotations

import json
from typing import Any

from transformers import (
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Qwen2Config,
    Qwen2MoeConfig,
)

from loraplex.modelgen.presets import ModelSpec
from loraplex.modelgen.tokenizer import BOS_TOKEN_ID, EOS_TOKEN_ID, PAD_TOKEN_ID

_CONFIG_CLASSES = {
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "mixtral": MixtralConfig,
    "qwen2_moe": Qwen2MoeConfig,
}


def model_config(spec: ModelSpec) -> dict[str, Any]:
    """The transformers config of the architecture, as `save_pretrained` writes it.

    The rope settings are also written in their pre-5.0 form (`rope_theta`, `rope_scaling`) and
    the dtype as both `dtype` and `torch_dtype`, so readers of either generation of checkpoints
    find them; transformers reads both forms to the same values.
    """
    p = spec.preset
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": p.rope_theta}
    if spec.rope_scaling is not None:
        rope_parameters = {**spec.rope_scaling, "rope_theta": p.rope_theta}
    kwargs: dict[str, Any] = dict(
        architectures=[spec.architecture_class],
        vocab_size=p.vocab_size,
        hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_hidden_layers,
        num_attention_heads=p.num_attention_heads,
        num_key_value_heads=p.num_key_value_heads,
        max_position_embeddings=p.max_position_embeddings,
        rms_norm_eps=p.rms_norm_eps,
        rope_parameters=rope_parameters,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        dtype=spec.dtype,
    )
    if spec.arch in ("llama", "mistral", "mixtral"):
        kwargs["head_dim"] = p.head_dim
    if spec.arch == "mistral":
        kwargs["sliding_window"] = spec.sliding_window
    if spec.arch in ("qwen2", "qwen2_moe"):
        kwargs["use_sliding_window"] = False
    if spec.is_moe:
        kwargs.update(_moe_config(spec))
    config = _CONFIG_CLASSES[spec.arch](**kwargs)
    content = json.loads(config.to_json_string())
    content["torch_dtype"] = spec.dtype
    content["rope_theta"] = p.rope_theta
    if spec.rope_scaling is not None:
        content["rope_scaling"] = dict(spec.rope_scaling)
    return dict(sorted(content.items()))


def _moe_config(spec: ModelSpec) -> dict[str, Any]:
    moe = spec.preset.moe
    if spec.arch == "mixtral":
        # Mixtral's experts are its MLP: intermediate_size is each expert's.
        return {
            "intermediate_size": moe.expert_intermediate_size,
            "num_local_experts": moe.num_experts,
            "num_experts_per_tok": spec.experts_per_token,
            "sliding_window": None,
        }
    return {
        "num_experts": moe.num_experts,
        "num_experts_per_tok": spec.experts_per_token,
        "moe_intermediate_size": moe.expert_intermediate_size,
        "shared_expert_intermediate_size": moe.shared_expert_intermediate_size,
        "norm_topk_prob": True,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "qkv_bias": True,
    }


def generation_config() -> dict[str, Any]:
    """Token ids for `generate`; no sampling defaults, so greedy stays the default."""
    config = GenerationConfig(
        bos_token_id=BOS_TOKEN_ID, eos_token_id=EOS_TOKEN_ID, pad_token_id=PAD_TOKEN_ID
    )
    return json.loads(config.to_json_string())
