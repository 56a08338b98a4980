"""Linear layers split across tensor-parallel ranks, and how checkpoint tensors load into them.

Column-parallel layers split the output features (q/k/v, gate/up); row-parallel layers split the
input features and all-reduce their partial sums (o, down). Fused layers keep their slices
contiguous so one matmul computes q, k and v (or gate and up) together. Each layer keeps the
rank and rank count it was built for, and `shard_output` / `shard_input` cut a full-size tensor
(checkpoint weight, LoRA A or B) down to that rank's part.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from loraplex.engine.distributed import all_reduce, tp_rank, tp_size
from loraplex.engine.layers.fp8 import (
    FP8_DTYPE,
    Fp8Activation,
    building_fp8_checkpoint,
    fp8_linear,
    quantize_rows,
)
from loraplex.engine.layers.norm import DeferredNorm


def _param(*shape: int, dtype: torch.dtype | None = None) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)


class LinearBase(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.tp_rank = tp_rank()
        self.tp_size = tp_size()
        self.in_features = in_features
        self.out_features = out_features
        self.compute_dtype = torch.get_default_dtype()  # activations (and LoRA) stay in it
        fp8 = building_fp8_checkpoint()
        self.weight = _param(out_features, in_features, dtype=FP8_DTYPE if fp8 else None)
        self.weight.weight_loader = self.weight_loader
        self.register_parameter("weight_scale", None)  # [out] float32 once the weight is fp8
        if fp8:
            self.weight_scale = _param(out_features, dtype=torch.float32)
            self.weight_scale.weight_loader = self.scale_loader
        if bias:
            self.bias = _param(out_features)
            self.bias.weight_loader = self.weight_loader
        else:
            self.register_parameter("bias", None)

    def shard_output(self, full: torch.Tensor, slice_index: int = 0) -> torch.Tensor:
        """This rank's rows of output slice `slice_index` of a full-size tensor [out, ...]."""
        return full

    def shard_input(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's columns of a full-size tensor [..., in]."""
        return full

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        _copy(param.data, loaded)

    def slice_index(self, shard_id: object) -> int:
        """Which output slice a checkpoint tensor fills (fused layers override)."""
        return 0 if shard_id is None else int(shard_id)

    def scale_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        """An FP8 checkpoint's weight scale, per tensor or per output channel, as one value per
        row of this rank's slice."""
        index = self.slice_index(shard_id)
        sizes = list(getattr(self, "output_sizes", [self.out_features]))
        offset, size = sum(sizes[:index]), sizes[index]
        flat = loaded.float().reshape(-1)
        values = flat.expand(size) if flat.numel() == 1 else self.shard_output(flat, index)
        _copy(param.data.narrow(0, offset, size), values)

    def quantize_fp8_(self) -> None:
        """Turn a loaded weight into fp8 with one scale per output row (the weight's own rows:
        under tensor parallelism each rank scales its shard)."""
        if self.weight_scale is not None:
            return
        q, scale = quantize_rows(self.weight.data)
        self.weight = nn.Parameter(q, requires_grad=False)
        self.weight_scale = nn.Parameter(scale.view(-1), requires_grad=False)

    def matmul(
        self, x: torch.Tensor | Fp8Activation | DeferredNorm, bias: torch.Tensor | None
    ) -> torch.Tensor:
        if isinstance(x, DeferredNorm):
            if self.fuses_norm and uses_gemv(x.x):
                from loraplex.kernels.gemv import RowNorm, gemv

                norm = RowNorm(x.norm.weight, x.norm.eps, x.residual, x.residual_out)
                return gemv(x.x, self.weight, bias, norm=norm)
            x = x.materialize()
        if self.weight_scale is None:
            return dense_linear(x.x if isinstance(x, Fp8Activation) else x, self.weight, bias)
        return fp8_linear(x, self.weight, self.weight_scale, bias)

    @property
    def fuses_norm(self) -> bool:
        """Whether this layer's GEMV can normalize its input itself (`DeferredNorm`): bf16 /
        fp16 weights on a GPU whose config gives their shape the tensor-core GEMV."""
        weight = self.weight
        if not weight.is_cuda or weight.dtype not in (torch.bfloat16, torch.float16):
            return False
        from loraplex.kernels.gemv import linear_row_limit, shape_config

        config = shape_config("gemv", *weight.shape, weight.device)
        return linear_row_limit(weight.device) > 0 and bool(config.get("tensor_cores"))

    @property
    def takes_fp8(self) -> bool:
        """Whether this layer's weight is fp8, so an input quantized beforehand saves work."""
        return self.weight_scale is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.bias)


def uses_gemv(x: torch.Tensor) -> bool:
    """Decode-sized batches on a GPU whose config names a `linear_max_m` go to the Triton GEMV,
    where it was measured faster than the library GEMM."""
    if x.is_cuda and x.dim() == 2 and x.dtype in (torch.bfloat16, torch.float16):
        from loraplex.kernels.gemv import linear_row_limit

        return x.shape[0] <= linear_row_limit(x.device)
    return False


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T (+ bias), through the GEMV where `uses_gemv`."""
    if uses_gemv(x):
        from loraplex.kernels.gemv import gemv

        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    if dst.shape != src.shape:
        raise ValueError(
            f"checkpoint tensor of shape {tuple(src.shape)} does not fit {tuple(dst.shape)}"
        )
    dst.copy_(src)


class ColumnParallelLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features // tp_size(), bias)

    def shard_output(self, full: torch.Tensor, slice_index: int = 0) -> torch.Tensor:
        size = self.out_features
        return full.narrow(0, self.tp_rank * size, size)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        _copy(param.data, self.shard_output(loaded))


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs of one input in one weight (gate_up_proj)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False) -> None:
        super().__init__(in_features, sum(output_sizes), bias)
        self.output_sizes = [size // self.tp_size for size in output_sizes]  # this rank's slices

    def shard_output(self, full: torch.Tensor, slice_index: int = 0) -> torch.Tensor:
        size = self.output_sizes[slice_index]
        return full.narrow(0, self.tp_rank * size, size)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: int) -> None:
        size = self.output_sizes[shard_id]
        offset = sum(self.output_sizes[:shard_id])
        _copy(param.data.narrow(0, offset, size), self.shard_output(loaded, shard_id))


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections in one weight; KV heads are replicated when fewer than ranks."""

    SLICES = {"q": 0, "k": 1, "v": 2}

    def __init__(
        self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool
    ) -> None:
        tp = tp_size()
        self.head_dim = head_dim
        self.num_heads = num_heads // tp
        self.num_kv_heads = max(1, num_kv_heads // tp)
        self.kv_replicas = max(1, tp // num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim
        LinearBase.__init__(self, hidden_size, out, bias)

    @property
    def output_sizes(self) -> list[int]:
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        return [q, kv, kv]

    def shard_output(self, full: torch.Tensor, slice_index: int = 0) -> torch.Tensor:
        size = self.output_sizes[slice_index]
        # Ranks that share a replicated KV head read the same rows.
        rank = self.tp_rank if slice_index == 0 else self.tp_rank // self.kv_replicas
        return full.narrow(0, rank * size, size)

    def slice_index(self, shard_id: object) -> int:
        return self.SLICES[shard_id]

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str) -> None:
        index = self.SLICES[shard_id]
        size = self.output_sizes[index]
        offset = sum(self.output_sizes[:index])
        _copy(param.data.narrow(0, offset, size), self.shard_output(loaded, index))


class RowParallelLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features // tp_size(), out_features, bias)

    def shard_input(self, full: torch.Tensor) -> torch.Tensor:
        size = self.in_features
        return full.narrow(-1, self.tp_rank * size, size)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        if param.dim() == 1:  # the bias is added once, after the reduction
            _copy(param.data, loaded)
        else:
            _copy(param.data, self.shard_input(loaded))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self.matmul(x, self.bias)
        bias = self.bias if self.tp_rank == 0 else None
        return all_reduce(self.matmul(x, bias))

    def forward_gated(self, gate_up: torch.Tensor) -> torch.Tensor | None:
        """This layer applied to silu(gate) * up of a gate_up output [T, 2 x in], in one GEMV
        launch that computes the activation as it loads it; None where no GEMV would run
        (fp8 weights, batches past the GEMV's rows, CPU): the caller activates first."""
        if self.weight_scale is not None or not uses_gemv(gate_up):
            return None
        from loraplex.kernels.gemv import gemv

        bias = self.bias if self.tp_rank == 0 else None
        out = gemv(gate_up, self.weight, bias, gated=True)
        return out if self.tp_size == 1 else all_reduce(out)
