"""Mixtral: the Llama decoder with a sparse mixture of SiLU-gated experts as each layer's MLP.

The router's softmax is taken over all experts in float32; each token keeps its top-k experts
and their probabilities renormalised to sum to one (as transformers' MixtralTopKRouter).
Checkpoints hold the experts one by one (`block_sparse_moe.experts.{e}.w1/w2/w3`: w1 gate,
w3 up, w2 down), or already stacked (`mlp.experts.gate_up_proj` / `down_proj`, the layout
transformers 5 writes with `save_original_format=False`); both load into stacked weights under
`mlp.experts`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from loraplex.engine.models.llama import LlamaForCausalLM, check_silu
from loraplex.engine.models.moe import (
    MoEExperts,
    RouterLinear,
    per_expert_checkpoint_entries,
    select_experts,
    stacked_checkpoint_entries,
)

MIXTRAL_EXPERT_NAMES = ("w1", "w3", "w2")  # (gate, up, down)


class MixtralSparseMoeBlock(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        check_silu(cfg)
        self.top_k = cfg.num_experts_per_tok
        self.gate = RouterLinear(cfg.hidden_size, cfg.num_local_experts)
        self.experts = MoEExperts(cfg.num_local_experts, cfg.hidden_size, cfg.intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        weights, ids = select_experts(self.gate(hidden), self.top_k, renormalize=True)
        return self.experts(hidden, weights, ids)


class MixtralForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        # Expert entries first: the loader takes the first entry found in a tensor's name.
        self.packed_modules_mapping = {
            **stacked_checkpoint_entries("mlp.experts"),
            **per_expert_checkpoint_entries(
                "block_sparse_moe.experts",
                "mlp.experts",
                cfg.num_local_experts,
                MIXTRAL_EXPERT_NAMES,
            ),
            "block_sparse_moe.gate": ("mlp.gate", None),
            **LlamaForCausalLM.packed_modules_mapping,
        }

    def make_mlp(self, cfg: Any, layer_index: int) -> nn.Module:
        return MixtralSparseMoeBlock(cfg)
