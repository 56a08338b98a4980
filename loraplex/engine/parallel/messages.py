"""What the driver sends the tensor-parallel workers: a small header of int64 numbers through a
pipe, then (for most commands) one flat tensor broadcast over the process group.

Nothing is pickled per step: headers are raw int64 bytes, payloads are plain tensors whose
sizes the header gives. A step's payload holds the integer inputs of the forward pass; a LoRA
slot's payload holds the adapter's A and B matrices back to back as raw bytes.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch

from loraplex.engine.context import ForwardContext
from loraplex.engine.layers.lora import LORA_TARGETS, ModuleStack, SlotWeights
from loraplex.engine.model_runner import ModelInput
from loraplex.kernels.lora_meta import LoRAKernelMeta

_MODULES = list(LORA_TARGETS)  # a module's number in a slot header


class Command(IntEnum):
    EXECUTE = 1  # header: sizes of a step; payload: its int64 inputs
    WRITE_LORA_SLOT = 2  # header: slot and tensor shapes; payload: the adapter's bytes
    SHUTDOWN = 3  # no payload: leave the process group and exit


def encode_header(values: list[int]) -> bytes:
    return np.asarray(values, dtype=np.int64).tobytes()


def decode_header(message: bytes) -> list[int]:
    return np.frombuffer(message, dtype=np.int64).tolist()


# ---- a forward step -----------------------------------------------------------------------


def pack_step(model_input: ModelInput) -> tuple[list[int], torch.Tensor]:
    """The header and the flat int64 payload from which `unpack_step` rebuilds `model_input`."""
    ctx = model_input.context
    num_seqs, width = ctx.block_tables.shape
    parts = [model_input.input_ids, model_input.positions, ctx.slot_mapping]
    if ctx.lora is not None:
        parts.append(ctx.lora.token_lora)
    parts += [ctx.context_lens, ctx.cu_seqlens_q, ctx.block_tables.reshape(-1)]
    parts.append(model_input.logits_indices)
    header = [
        Command.EXECUTE,
        model_input.input_ids.shape[0],
        num_seqs,
        width,
        model_input.logits_indices.shape[0],
        ctx.max_query_len,
        ctx.max_context_len,
        int(ctx.lora is not None),
    ]
    payload = torch.cat([part.to(torch.int64) for part in parts])
    return header, payload


def step_payload_size(header: list[int]) -> int:
    _, tokens, seqs, width, sampled, _, _, has_lora = header
    return tokens * (3 + has_lora) + seqs + (seqs + 1) + seqs * width + sampled


def unpack_step(header: list[int], payload: torch.Tensor, max_loras: int) -> ModelInput:
    _, tokens, seqs, width, sampled, max_query_len, max_context_len, has_lora = header
    sizes = [tokens, tokens, tokens, tokens * has_lora, seqs, seqs + 1, seqs * width, sampled]
    ids, positions, slots, token_lora, lens, cu_seqlens, tables, logits_indices = payload.split(
        sizes
    )
    ctx = ForwardContext(
        slot_mapping=slots,
        block_tables=tables.view(seqs, width).to(torch.int32),
        context_lens=lens.to(torch.int32),
        cu_seqlens_q=cu_seqlens.to(torch.int32),
        max_query_len=max_query_len,
        max_context_len=max_context_len,
    )
    if has_lora:
        ctx.lora = LoRAKernelMeta.build(
            token_lora.to(torch.int32), max_loras, prefill=max_query_len > 1
        )
    return ModelInput(
        input_ids=ids, positions=positions, context=ctx, logits_indices=logits_indices
    )


# ---- a LoRA slot --------------------------------------------------------------------------


def pack_lora_slot(
    slot: int, weights: SlotWeights, device: torch.device
) -> tuple[list[int], torch.Tensor]:
    """The header and the byte payload of one adapter's full-size weights for slot `slot`:
    per module its number, layer count, rank, A columns, B rows and layer indices; the
    payload holds each module's A then B."""
    entries: list[int] = []
    tensors: list[torch.Tensor] = []
    for stack in weights:
        count, rank, columns = stack.a.shape
        entries += [_MODULES.index(stack.module), count, rank, columns, stack.b.shape[1]]
        entries += stack.layers
        tensors += [stack.a, stack.b]
    payload = _back_to_back(tensors).view(torch.uint8).to(device, non_blocking=True)
    header = [Command.WRITE_LORA_SLOT, slot, len(weights), payload.numel(), *entries]
    return header, payload


def _back_to_back(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors flattened one after another: a view of their buffer when they already lie so
    in it (a loaded adapter's pinned buffer), else a copy."""
    if not tensors:
        return torch.empty(0)
    first = tensors[0]
    offset = first.storage_offset()
    for t in tensors:
        if (
            not t.is_contiguous()
            or t.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
            or t.storage_offset() != offset
        ):
            return torch.cat([t.reshape(-1) for t in tensors])
        offset += t.numel()
    return first.as_strided((offset - first.storage_offset(),), (1,), first.storage_offset())


def lora_payload_size(header: list[int]) -> int:
    return header[3]


def unpack_lora_slot(
    header: list[int], payload: torch.Tensor, dtype: torch.dtype
) -> tuple[int, SlotWeights]:
    _, slot, count, _, *entries = header
    flat = payload.view(dtype)
    weights: SlotWeights = []
    field = offset = 0
    for _ in range(count):
        module, layers, rank, columns, rows = entries[field : field + 5]
        indices = tuple(entries[field + 5 : field + 5 + layers])
        field += 5 + layers
        a = flat[offset : offset + layers * rank * columns].view(layers, rank, columns)
        offset += a.numel()
        b = flat[offset : offset + layers * rows * rank].view(layers, rows, rank)
        offset += b.numel()
        weights.append(ModuleStack(_MODULES[module], indices, a, b))
    return slot, weights
