"""The Llama family: Llama, Mistral and Qwen2 share one decoder, differing only in config.

Qwen2 adds biases to q/k/v; Mistral (and Qwen2 when enabled) use a sliding attention window;
Llama may use llama3 / linear rope scaling and optional attention / MLP biases. The
mixture-of-experts models (Mixtral, Qwen2-MoE) reuse this decoder and replace only the
feed-forward block of each layer, through `LlamaForCausalLM.make_mlp`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from loraplex.engine.distributed import tp_size
from loraplex.engine.layers.activation import SiluAndMul
from loraplex.engine.layers.attention import Attention
from loraplex.engine.layers.embed import ParallelLMHead, VocabParallelEmbedding
from loraplex.engine.layers.linear import (
    LinearBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from loraplex.engine.layers.norm import RMSNorm
from loraplex.engine.layers.rotary import RotaryEmbedding, rope_parameters


def _sliding_window(cfg: Any, layer_index: int) -> int | None:
    layer_types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    if layer_types is not None:
        return window if layer_types[layer_index] == "sliding_attention" else None
    if cfg.model_type == "qwen2" and not getattr(cfg, "use_sliding_window", False):
        return None
    return window


class LlamaAttention(nn.Module):
    def __init__(self, cfg: Any, layer_index: int) -> None:
        super().__init__()
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        num_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        qwen = cfg.model_type in ("qwen2", "qwen2_moe")
        qkv_bias = getattr(cfg, "qkv_bias", qwen) or getattr(cfg, "attention_bias", False)
        o_bias = not qwen and getattr(cfg, "attention_bias", False)
        self.qkv_proj = QKVParallelLinear(
            cfg.hidden_size, head_dim, cfg.num_attention_heads, num_kv_heads, qkv_bias
        )
        self.o_proj = RowParallelLinear(cfg.num_attention_heads * head_dim, cfg.hidden_size, o_bias)
        self.qkv_sizes = self.qkv_proj.output_sizes  # kept: LoRA may wrap qkv_proj
        self.num_heads = self.qkv_proj.num_heads
        self.num_kv_heads = self.qkv_proj.num_kv_heads
        self.head_dim = head_dim
        self.rotary = RotaryEmbedding(head_dim, cfg.max_position_embeddings, rope_parameters(cfg))
        self.attn = Attention(
            self.num_heads,
            self.num_kv_heads,
            head_dim,
            scale=head_dim**-0.5,
            sliding_window=_sliding_window(cfg, layer_index),
        )

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(hidden)
        q, k, v = qkv.split(self.qkv_sizes, dim=-1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        return self.o_proj(self.attn(q, k, v, self.rotary, positions))


def check_silu(cfg: Any) -> None:
    if cfg.hidden_act != "silu":
        raise ValueError(f"hidden_act={cfg.hidden_act!r} is not supported (only 'silu')")


class LlamaMLP(nn.Module):
    def __init__(self, cfg: Any, intermediate_size: int | None = None) -> None:
        super().__init__()
        check_silu(cfg)
        bias = getattr(cfg, "mlp_bias", False)
        size = cfg.intermediate_size if intermediate_size is None else intermediate_size
        self.gate_up_proj = MergedColumnParallelLinear(cfg.hidden_size, [size, size], bias)
        self.down_proj = RowParallelLinear(size, cfg.hidden_size, bias)
        self.act = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        # At decode sizes the down GEMV computes the activation itself (one launch fewer); a
        # LoRA-wrapped down projection needs the activation for its own product.
        if type(self.down_proj) is RowParallelLinear:
            out = self.down_proj.forward_gated(gate_up)
            if out is not None:
                return out
        return self.down_proj(self.act(gate_up))


# Builds the feed-forward block of decoder layer `layer_index`.
MLPFactory = Callable[[Any, int], nn.Module]


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: Any, layer_index: int, mlp: nn.Module) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(cfg, layer_index)
        self.mlp = mlp
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def use_fp8_activations(self) -> None:
        """Have the norms (and a dense MLP's activation) hand the projections they feed their
        input quantized, where those projections hold fp8 weights."""
        self.input_layernorm.fp8_output = self.self_attn.qkv_proj.takes_fp8
        if isinstance(self.mlp, LlamaMLP):
            self.post_attention_layernorm.fp8_output = self.mlp.gate_up_proj.takes_fp8
            self.mlp.act.fp8_output = self.mlp.down_proj.takes_fp8

    def defer_norms_to_projections(self) -> None:
        """Have each norm hand its projection a `DeferredNorm` where that projection is a plain
        (not LoRA-wrapped) linear layer whose GEMV normalizes its input itself."""

        def fuses(layer: nn.Module) -> bool:
            return isinstance(layer, LinearBase) and layer.fuses_norm

        self.input_layernorm.defer_to_consumer = fuses(self.self_attn.qkv_proj)
        if isinstance(self.mlp, LlamaMLP):
            self.post_attention_layernorm.defer_to_consumer = fuses(self.mlp.gate_up_proj)

    def forward(
        self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's MLP output, the residual stream before it); the next norm adds the
        two, so each residual add is fused into the norm that follows it."""
        if residual is None:
            residual, hidden = hidden, self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: Any, make_mlp: MLPFactory) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(cfg, i, make_mlp(cfg, i)) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        if residual is None:  # a model without layers
            return self.norm(hidden)
        return self.norm(hidden, residual)[0]


class LlamaForCausalLM(nn.Module):
    # checkpoint module name -> (fused module here, slice of it)
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"),
        "k_proj": ("qkv_proj", "k"),
        "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        if cfg.num_attention_heads % tp_size():
            raise ValueError(
                f"num_attention_heads={cfg.num_attention_heads} is not divisible by "
                f"tensor_parallel_size={tp_size()}"
            )
        self.config = cfg
        self.model = LlamaModel(cfg, self.make_mlp)
        self.lm_head = ParallelLMHead(cfg.vocab_size, cfg.hidden_size)
        if getattr(cfg, "tie_word_embeddings", False):
            self.lm_head.weight = self.model.embed_tokens.weight

    def make_mlp(self, cfg: Any, layer_index: int) -> nn.Module:
        """The feed-forward block of a decoder layer; MoE models return their expert block."""
        return LlamaMLP(cfg)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)
