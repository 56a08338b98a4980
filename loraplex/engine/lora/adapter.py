"""A PEFT LoRA folder loaded into CPU memory, ready to copy into a GPU slot.

The files are checked by the same validator that guards uploads (stdlib-only, no pickle ever);
then the PEFT scaling (alpha / r, or alpha / sqrt(r) for rsLoRA) is folded into B and every
tensor cast to the model dtype, so that a slot holds exactly what the kernels multiply.
"""

from __future__ import annotations

import math
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
from loraplex.engine.layers.lora import LORA_TARGETS, ModuleStack, SlotWeights
from loraplex.lora_request import LoRARequest


@dataclass(eq=False)  # compared and hashed by identity: two loads are two adapters
class LoRAAdapter:
    lora_int_id: int
    name: str
    path: str
    rank: int
    weights: SlotWeights  # module by module, views of one (pinned) buffer

    @property
    def num_bytes(self) -> int:
        return sum(stack.a.nbytes + stack.b.nbytes for stack in self.weights)


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
    # Every tensor lives in one (pinned) buffer, so a slot load is a single host-to-GPU copy,
    # each module's layers back to back, so the slot writer copies a module in one go.
    by_module: dict[str, list] = {}
    for pair in sorted(spec.pairs, key=lambda p: p.layer):
        by_module.setdefault(pair.module, []).append(pair)
    modules = sorted(by_module, key=list(LORA_TARGETS).index)
    shapes = []
    for module in modules:
        first = by_module[module][0]
        count = len(by_module[module])
        shapes += [(count, *tensors[first.lora_a].shape), (count, *tensors[first.lora_b].shape)]
    sizes = [math.prod(shape) for shape in shapes]
    packed = torch.empty(sum(sizes), dtype=dtype, pin_memory=pin)
    views = [part.view(shape) for part, shape in zip(packed.split(sizes), shapes, strict=True)]
    weights = []
    for i, module in enumerate(modules):
        a, b = views[2 * i], views[2 * i + 1]
        for j, pair in enumerate(by_module[module]):
            a[j].copy_(tensors[pair.lora_a])
            # Scale in float32, round once: as close as the model dtype allows to PEFT's math.
            b[j].copy_(tensors[pair.lora_b].float() * scaling)
        weights.append(ModuleStack(module, tuple(p.layer for p in by_module[module]), a, b))
    return LoRAAdapter(
        lora_int_id=request.lora_int_id,
        name=request.lora_name,
        path=str(folder),
        rank=spec.rank,
        weights=weights,
    )
