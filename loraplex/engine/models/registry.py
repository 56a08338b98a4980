"""Maps a checkpoint's `config.architectures` to the model class that runs it."""

from __future__ import annotations

from typing import Any

from torch import nn

from loraplex.engine.models.llama import LlamaForCausalLM
from loraplex.engine.models.mixtral import MixtralForCausalLM
from loraplex.engine.models.qwen2_moe import Qwen2MoeForCausalLM

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "MixtralForCausalLM": MixtralForCausalLM,
    "Qwen2MoeForCausalLM": Qwen2MoeForCausalLM,
}


def resolve_model_class(hf_config: Any) -> type[nn.Module]:
    architectures = getattr(hf_config, "architectures", None) or []
    for name in architectures:
        if name in MODEL_CLASSES:
            return MODEL_CLASSES[name]
    raise ValueError(
        f"unsupported architecture {', '.join(architectures) or '(none given)'}; "
        f"supported: {', '.join(sorted(MODEL_CLASSES))}"
    )
