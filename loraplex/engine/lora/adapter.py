"""A PEFT LoRA folder loaded into CPU memory, ready to copy into a GPU slot.

The files are checked by the same validator that guards uploads (stdlib-only, no pickle ever);
then the PEFT scaling (alpha / r, or alpha / sqrt(r) for rsLoRA) is folded into B and every
tensor cast to the model dtype, so that a slot holds exactly what the kernels multiply.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loraplex.adapter_format.peft import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    AdapterFormatError,
    BaseModelShape,
    is_pickle_filename,
    load_adapter_tensors,
    pickle_refusal,
    validate_adapter_files,
)
from loraplex.engine.layers.lora import LORA_TARGETS
from loraplex.lora_request import LoRARequest


@dataclass(eq=False)  # compared and hashed by identity: two loads are two adapters
class LoRAAdapter:
    lora_int_id: int
    name: str
    path: str
    rank: int
    # (layer index, module name such as "q_proj") -> (A [r, in], B [out, r] with scaling folded)
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]

    @property
    def num_bytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.weights.values())


def load_adapter(
    request: LoRARequest, hf_config: Any, *, max_rank: int, dtype: torch.dtype, pin: bool
) -> LoRAAdapter:
    """Read and check `request.lora_path`; raise ValueError naming what is wrong."""
    folder = Path(request.lora_path)
    if not folder.is_dir():
        raise ValueError(f"LoRA {request.lora_name!r}: {str(folder)!r} is not a folder")
    config_path = folder / ADAPTER_CONFIG_FILE
    weights_path = folder / ADAPTER_WEIGHTS_FILE
    if not weights_path.is_file():
        pickled = sorted(p.name for p in folder.iterdir() if is_pickle_filename(p.name))
        if pickled:
            raise ValueError(f"LoRA {request.lora_name!r}: {pickle_refusal(pickled[0])}")
        raise ValueError(
            f"LoRA {request.lora_name!r}: {str(folder)!r} has no {ADAPTER_WEIGHTS_FILE}"
        )
    if not config_path.is_file():
        raise ValueError(
            f"LoRA {request.lora_name!r}: {str(folder)!r} has no {ADAPTER_CONFIG_FILE}"
        )
    base = BaseModelShape.from_config(hf_config.to_dict())
    try:
        spec = validate_adapter_files(config_path, weights_path, base=base, max_rank=max_rank)
    except AdapterFormatError as exc:
        raise ValueError(f"LoRA {request.lora_name!r}: {exc}") from exc
    tensors = load_adapter_tensors(weights_path)
    scaling = spec.scaling
    # Every tensor lives in one (pinned) buffer, so a slot load is a single host-to-GPU copy:
    # all A matrices, then all B matrices, each module by module with its layers in order, so
    # the slot writer takes a module's layers as one stacked view.
    pairs = sorted(spec.pairs, key=lambda p: (list(LORA_TARGETS).index(p.module), p.layer))
    sizes = [tensors[p.lora_a].numel() + tensors[p.lora_b].numel() for p in pairs]
    packed = torch.empty(sum(sizes), dtype=dtype, pin_memory=pin)
    shapes = [tensors[p.lora_a].shape for p in pairs] + [tensors[p.lora_b].shape for p in pairs]
    ends = list(itertools.accumulate(shape.numel() for shape in shapes))
    views = [
        packed[end - shape.numel() : end].view(shape)
        for shape, end in zip(shapes, ends, strict=True)
    ]
    weights = {}
    for pair, a, b in zip(pairs, views[: len(pairs)], views[len(pairs) :], strict=True):
        a.copy_(tensors[pair.lora_a])
        # Scale in float32, round once: as close as the model dtype allows to PEFT's own math.
        b.copy_(tensors[pair.lora_b].float() * scaling)
        weights[(pair.layer, pair.module)] = (a, b)
    return LoRAAdapter(
        lora_int_id=request.lora_int_id,
        name=request.lora_name,
        path=str(folder),
        rank=spec.rank,
        weights=weights,
    )
