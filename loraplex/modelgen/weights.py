"""The tensors of a model and their random initialisation.

Every tensor is drawn from its own `torch.Generator`, seeded from (seed, tensor name), so a
tensor's values do not depend on which other tensors were made, in which order, or in which
shard. The scales keep the residual stream, attention scores and logits in a useful range
(see `TARGET_LOGIT_STD`), so greedy decoding is decided by the weights, not by rounding.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from loraplex.modelgen.presets import ModelSpec

# Logits with a standard deviation of a few units: top-1/top-2 gaps far above float rounding,
# yet a softmax that still spreads probability over several tokens for sampling tests.
TARGET_LOGIT_STD = 4.0
# Norm weights vary around 1 so that an engine that ignores them is caught by comparisons.
NORM_WEIGHT_NOISE = 0.1
# q/k/v biases (qwen2) are large enough that dropping one changes the outputs visibly.
BIAS_STD = 0.25
# Tied models read logits off the embeddings, so the residual updates must outweigh the current
# token's embedding in the final hidden state, or the model only ever predicts its last input.
TIED_RESIDUAL_GAIN = 5.0
# Sharper attention than a plain 1/sqrt(fan_in) so the attended positions (and thus masks,
# sliding windows and rotary positions) matter.
QUERY_KEY_GAIN = 2.0
# Router logits of unit spread: tokens spread over all experts, and the k-th and (k+1)-th
# choices are usually far apart compared to rounding, so the selection is decided by the weights.
ROUTER_LOGIT_STD = 1.0

# Checkpoint names of the (gate, up, down) projections of an MLP or expert.
LLAMA_MLP = ("gate_proj", "up_proj", "down_proj")
MIXTRAL_EXPERT = ("w1", "w3", "w2")
# The attribute of a decoder layer that holds its mixture of experts.
MOE_BLOCK = {"mixtral": "block_sparse_moe", "qwen2_moe": "mlp"}

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class TensorSpec:
    """One checkpoint tensor: its name, shape and the normal distribution it is drawn from."""

    name: str
    shape: tuple[int, ...]
    mean: float
    std: float

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def tensor_specs(spec: ModelSpec) -> list[TensorSpec]:
    """All tensors of the checkpoint, named as transformers names them, in layer order."""
    p = spec.preset
    hidden, head_dim = p.hidden_size, p.head_dim
    q_size, kv_size = p.num_attention_heads * head_dim, p.num_key_value_heads * head_dim
    # Pre-norm blocks normalise their inputs, so only the ratio between the embeddings and the
    # residual updates matters; tied embeddings are sized by the logit target instead.
    tied = spec.tie_word_embeddings
    embed_std = TARGET_LOGIT_STD / math.sqrt(hidden) if tied else 1.0
    # Each residual branch scaled down with depth (GPT-2's 1/sqrt(2L)), so the residual stream
    # keeps the same size however deep the model is and a perturbation (rounding, quantization)
    # is not amplified layer after layer as in a chaotic random network.
    depth_scale = 1.0 / math.sqrt(2 * p.num_hidden_layers)
    residual_gain = (TIED_RESIDUAL_GAIN if tied else 1.0) * depth_scale
    normal = lambda name, shape, gain=1.0: TensorSpec(name, shape, 0.0, gain / math.sqrt(shape[1]))
    norm = lambda name: TensorSpec(name, (hidden,), 1.0, NORM_WEIGHT_NOISE)

    tensors = [TensorSpec("model.embed_tokens.weight", (p.vocab_size, hidden), 0.0, embed_std)]
    for i in range(p.num_hidden_layers):
        attn = f"model.layers.{i}.self_attn"
        tensors += [
            norm(f"model.layers.{i}.input_layernorm.weight"),
            normal(f"{attn}.q_proj.weight", (q_size, hidden), QUERY_KEY_GAIN),
            normal(f"{attn}.k_proj.weight", (kv_size, hidden), QUERY_KEY_GAIN),
            normal(f"{attn}.v_proj.weight", (kv_size, hidden)),
            normal(f"{attn}.o_proj.weight", (hidden, q_size), residual_gain),
            norm(f"model.layers.{i}.post_attention_layernorm.weight"),
        ]
        tensors += _mlp_tensors(spec, i, normal, residual_gain)
        if spec.attention_bias:
            tensors += [
                TensorSpec(f"{attn}.{proj}.bias", (size,), 0.0, BIAS_STD)
                for proj, size in (("q_proj", q_size), ("k_proj", kv_size), ("v_proj", kv_size))
            ]
    tensors.append(norm("model.norm.weight"))
    if not spec.tie_word_embeddings:
        tensors.append(normal("lm_head.weight", (p.vocab_size, hidden), TARGET_LOGIT_STD))
    return tensors


def _mlp_tensors(
    spec: ModelSpec, layer: int, normal: Callable[..., TensorSpec], residual_gain: float
) -> list[TensorSpec]:
    """The feed-forward tensors of one layer: a dense MLP, or a router and its experts in the
    per-expert layout transformers writes (and hub checkpoints use)."""
    p = spec.preset
    hidden = p.hidden_size

    def gated(prefix: str, size: int, names: tuple[str, str, str]) -> list[TensorSpec]:
        gate, up, down = names
        return [
            normal(f"{prefix}.{gate}.weight", (size, hidden)),
            normal(f"{prefix}.{up}.weight", (size, hidden)),
            normal(f"{prefix}.{down}.weight", (hidden, size), residual_gain),
        ]

    if not spec.is_moe:
        return gated(f"model.layers.{layer}.mlp", p.intermediate_size, LLAMA_MLP)
    moe = p.moe
    block = f"model.layers.{layer}.{MOE_BLOCK[spec.arch]}"
    names = MIXTRAL_EXPERT if spec.arch == "mixtral" else LLAMA_MLP
    tensors = [normal(f"{block}.gate.weight", (moe.num_experts, hidden), ROUTER_LOGIT_STD)]
    for expert in range(moe.num_experts):
        tensors += gated(f"{block}.experts.{expert}", moe.expert_intermediate_size, names)
    if spec.arch == "qwen2_moe":
        size = moe.shared_expert_intermediate_size
        tensors += gated(f"{block}.shared_expert", size, LLAMA_MLP)
        tensors.append(normal(f"{block}.shared_expert_gate.weight", (1, hidden)))
    return tensors


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed that depends only on the model seed and the tensor name."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generate_tensor(
    tensor: TensorSpec, seed: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Draws the tensor in float32 on `device`, then casts it and returns it on the CPU."""
    generator = torch.Generator(device=device).manual_seed(tensor_seed(seed, tensor.name))
    values = torch.empty(tensor.shape, dtype=torch.float32, device=device)
    values.normal_(mean=tensor.mean, std=tensor.std, generator=generator)
    return values.to(dtype).cpu().contiguous()
