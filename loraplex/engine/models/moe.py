"""Mixture-of-experts building blocks: top-k routing and the stacked experts it selects.

Experts are stored stacked, as the fused MoE kernel reads them: `experts.gate_up_proj.weight`
[E, 2 * I, H] (each expert's gate rows, then its up rows) and `experts.down_proj.weight`
[E, H, I]. Under tensor parallelism each rank keeps its slice of every expert's intermediate
dimension, the dense MLP's column / row split: gate and up rows are split, down columns are
split, and the partial outputs are summed over the ranks. The router is replicated.

With FP8 weights the experts hold float8_e4m3fn codes and one float32 scale per output channel
of each expert (`weight_scale` [E, out]); the kernel multiplies them with activations kept in
the model dtype. They are quantized after loading (`quantize_fp8_`) or read from an FP8
checkpoint (per-expert `weight_scale` tensors, per channel or per tensor). Routers stay in the
model dtype, as FP8 checkpoints keep them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loraplex.engine.distributed import all_reduce, tp_rank, tp_size
from loraplex.engine.layers.fp8 import FP8_DTYPE, building_fp8_checkpoint, quantize_rows
from loraplex.kernels.reference import fused_moe_ref

# Shard id of a checkpoint tensor that holds every expert of a projection, stacked.
STACKED = "stacked"


def select_experts(
    router_logits: torch.Tensor, top_k: int, *, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `top_k` experts of each token by softmax probability (taken in float32), and their
    weights: the probabilities themselves, or renormalised to sum to one over the chosen.

    router_logits: [T, E]. Returns (weights [T, top_k] float32, ids [T, top_k] int32).
    """
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


class RouterLinear(nn.Module):
    """A replicated projection without bias that is never quantized: a router, or the sigmoid
    gate of a shared expert. A rounding error here would send tokens to other experts."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class StackedExpertWeight(nn.Module):
    """One projection of every expert as one parameter `weight` [E, out, in], this rank's part.

    Each expert's matrix is split across ranks along `split_dim`: 0 for gate/up (output rows,
    in `num_slices` equal slices, each split on its own) or 1 for down (input columns).
    """

    def __init__(
        self,
        num_experts: int,
        out_features: int,
        in_features: int,
        *,
        split_dim: int,
        num_slices: int = 1,
    ) -> None:
        super().__init__()
        self.tp_rank = tp_rank()
        self.tp_size = tp_size()
        self.split_dim = split_dim
        self.num_slices = num_slices
        shape = [num_experts, out_features, in_features]
        if shape[1 + split_dim] % (self.tp_size * num_slices):
            raise ValueError(
                f"expert dimension {shape[1 + split_dim]} does not split into "
                f"{num_slices} slice(s) over {self.tp_size} rank(s)"
            )
        shape[1 + split_dim] //= self.tp_size
        fp8 = building_fp8_checkpoint()
        weight = torch.empty(*shape, dtype=FP8_DTYPE if fp8 else None)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        self.register_parameter("weight_scale", None)  # [E, out] float32 once the weight is fp8
        if fp8:
            scale = torch.empty(shape[0], shape[1], dtype=torch.float32)
            self.weight_scale = nn.Parameter(scale, requires_grad=False)
            self.weight_scale.weight_loader = self.scale_loader

    def weight_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: tuple[int, int] | str
    ) -> None:
        """Copy slice `shard_id = (expert, slice)` of one expert from its full-size checkpoint
        tensor, keeping this rank's part; with `shard_id == STACKED`, every expert at once from
        a stacked [E, out, in] tensor (the fused layout transformers can write)."""
        if shard_id == STACKED:
            self._load_stacked(param, loaded)
            return
        expert, slice_index = shard_id
        rows = param.shape[1] // self.num_slices
        local = [rows, param.shape[2]]
        full = list(local)
        full[self.split_dim] *= self.tp_size
        if list(loaded.shape) != full:
            raise ValueError(f"expert tensor of shape {tuple(loaded.shape)} does not fit {full}")
        size = local[self.split_dim]
        part = loaded.narrow(self.split_dim, self.tp_rank * size, size)
        param.data[expert].narrow(0, slice_index * rows, rows).copy_(part)

    def _load_stacked(self, param: nn.Parameter, loaded: torch.Tensor) -> None:
        full = list(param.shape)
        full[1 + self.split_dim] *= self.tp_size
        if list(loaded.shape) != full:
            raise ValueError(f"stacked expert tensor {tuple(loaded.shape)} does not fit {full}")
        rows = param.shape[1] // self.num_slices
        for slice_index in range(self.num_slices):
            for expert in range(param.shape[0]):
                one = loaded[expert]
                if self.split_dim == 0:
                    one = one.narrow(0, slice_index * rows * self.tp_size, rows * self.tp_size)
                self.weight_loader(param, one, (expert, slice_index))

    def scale_loader(
        self, param: nn.Parameter, loaded: torch.Tensor, shard_id: tuple[int, int]
    ) -> None:
        """An FP8 checkpoint's scale of one expert's slice, per tensor or per output channel
        ([out] or [out, 1]), as one value per row of this rank's part."""
        expert, slice_index = shard_id
        rows = param.shape[1] // self.num_slices
        flat = loaded.float().reshape(-1)
        full_rows = rows * self.tp_size if self.split_dim == 0 else rows
        if flat.numel() == 1:
            values = flat.expand(rows)
        elif flat.numel() == full_rows:
            values = flat.narrow(0, self.tp_rank * rows, rows) if self.split_dim == 0 else flat
        else:
            raise ValueError(f"weight_scale has {flat.numel()} values for {full_rows} rows")
        param.data[expert].narrow(0, slice_index * rows, rows).copy_(values)

    def quantize_fp8_(self) -> None:
        """Turn the loaded weights into fp8 with one scale per output channel of each expert
        (of this rank's part, which its own partial product then carries)."""
        if self.weight_scale is not None:
            return
        q, scale = quantize_rows(self.weight.data)
        self.weight = nn.Parameter(q, requires_grad=False)
        self.weight_scale = nn.Parameter(scale.squeeze(-1), requires_grad=False)


class MoEExperts(nn.Module):
    """The routed experts of one layer: y[t] = sum_k w[t, k] * expert_{e[t, k]}(x[t]), each
    expert a SiLU-gated MLP, all of them computed by the fused MoE kernel on CUDA (its
    reference on CPU)."""

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.gate_up_proj = StackedExpertWeight(
            num_experts, 2 * intermediate_size, hidden_size, split_dim=0, num_slices=2
        )
        self.down_proj = StackedExpertWeight(
            num_experts, hidden_size, intermediate_size, split_dim=1
        )
        self.tp_size = self.down_proj.tp_size

    def quantize_fp8_(self) -> None:
        self.gate_up_proj.quantize_fp8_()
        self.down_proj.quantize_fp8_()

    def forward(
        self, hidden: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
    ) -> torch.Tensor:
        """hidden: [T, H]; topk_weights: [T, K] float32; topk_ids: [T, K] int32 -> [T, H]."""
        w13, w2 = self.gate_up_proj.weight, self.down_proj.weight
        scales = {
            "w13_scale": self.gate_up_proj.weight_scale,
            "w2_scale": self.down_proj.weight_scale,
        }
        if hidden.is_cuda:
            from loraplex import kernels

            out = kernels.fused_moe(hidden.contiguous(), w13, w2, topk_weights, topk_ids, **scales)
        else:
            out = fused_moe_ref(hidden, w13, w2, topk_weights, topk_ids, **scales)
        if self.tp_size > 1:
            all_reduce(out)
        return out


# Loader entries: checkpoint module -> (engine module, shard id), as in packed_modules_mapping.
CheckpointEntries = dict[str, tuple[str, object]]


def stacked_checkpoint_entries(prefix: str) -> CheckpointEntries:
    """The fused layout (`save_original_format=False` in transformers 5): `{prefix}.gate_up_proj`
    [E, 2 * I, H] (gate rows, then up rows) and `{prefix}.down_proj` [E, H, I], with no
    `.weight` suffix, into the stacked weights of the `MoEExperts` at `prefix`."""
    return {
        f"{prefix}.gate_up_proj": (f"{prefix}.gate_up_proj.weight", STACKED),
        f"{prefix}.down_proj": (f"{prefix}.down_proj.weight", STACKED),
    }


def per_expert_checkpoint_entries(
    checkpoint_prefix: str, module_prefix: str, num_experts: int, names: tuple[str, str, str]
) -> CheckpointEntries:
    """Where the per-expert tensors of the layout transformers writes go: the (gate, up, down)
    `names` of `{checkpoint_prefix}.{e}` -> slices of the stacked weights of `module_prefix`
    (an `MoEExperts`), with shard id (expert, slice)."""
    gate, up, down = names
    entries: CheckpointEntries = {}
    for expert in range(num_experts):
        source = f"{checkpoint_prefix}.{expert}"
        entries[f"{source}.{gate}"] = (f"{module_prefix}.gate_up_proj", (expert, 0))
        entries[f"{source}.{up}"] = (f"{module_prefix}.gate_up_proj", (expert, 1))
        entries[f"{source}.{down}"] = (f"{module_prefix}.down_proj", (expert, 0))
    return entries
