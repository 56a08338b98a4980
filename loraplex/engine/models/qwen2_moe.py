"""Qwen2-MoE: the Llama decoder (with q/k/v biases) whose MLP is a sparse mixture of routed
experts beside one shared expert that every token uses, scaled by its own sigmoid gate.

Routing as transformers' Qwen2MoeTopKRouter: softmax over all experts in float32, top-k, the
chosen probabilities renormalised only when `norm_topk_prob` is set, then rounded to the model
dtype. Layers listed in `mlp_only_layers`, or off the `decoder_sparse_step` grid, keep a dense
MLP. Checkpoints hold the experts one by one (`mlp.experts.{e}.gate_proj/up_proj/down_proj`)
or stacked (`mlp.experts.gate_up_proj` / `down_proj`); both load into stacked weights under
`mlp.experts`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from loraplex.engine.models.llama import LlamaForCausalLM, LlamaMLP, check_silu
from loraplex.engine.models.moe import (
    MoEExperts,
    RouterLinear,
    per_expert_checkpoint_entries,
    select_experts,
    stacked_checkpoint_entries,
)

QWEN2_MOE_EXPERT_NAMES = ("gate_proj", "up_proj", "down_proj")


def is_sparse_layer(cfg: Any, layer_index: int) -> bool:
    """Whether decoder layer `layer_index` routes over experts (else it has a dense MLP)."""
    return (
        layer_index not in (getattr(cfg, "mlp_only_layers", None) or [])
        and cfg.num_experts > 0
        and (layer_index + 1) % cfg.decoder_sparse_step == 0
    )


class Qwen2MoeSparseMoeBlock(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        check_silu(cfg)
        self.top_k = cfg.num_experts_per_tok
        self.norm_topk_prob = cfg.norm_topk_prob
        hidden = cfg.hidden_size
        self.gate = RouterLinear(hidden, cfg.num_experts)
        self.experts = MoEExperts(cfg.num_experts, hidden, cfg.moe_intermediate_size)
        self.shared_expert = LlamaMLP(cfg, cfg.shared_expert_intermediate_size)
        self.shared_expert_gate = RouterLinear(hidden, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.gate(hidden)
        weights, ids = select_experts(logits, self.top_k, renormalize=self.norm_topk_prob)
        routed = self.experts(hidden, weights.to(logits.dtype).float(), ids)
        shared = torch.sigmoid(self.shared_expert_gate(hidden)) * self.shared_expert(hidden)
        return routed + shared


class Qwen2MoeForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        # Expert entries first: the loader takes the first entry found in a tensor's name, and
        # the shared expert's gate_proj must reach the dense entry, not an expert's.
        self.packed_modules_mapping = {
            **stacked_checkpoint_entries("mlp.experts"),
            **per_expert_checkpoint_entries(
                "mlp.experts", "mlp.experts", cfg.num_experts, QWEN2_MOE_EXPERT_NAMES
            ),
            **LlamaForCausalLM.packed_modules_mapping,
        }

    def make_mlp(self, cfg: Any, layer_index: int) -> nn.Module:
        if is_sparse_layer(cfg, layer_index):
            return Qwen2MoeSparseMoeBlock(cfg)
        return LlamaMLP(cfg)
