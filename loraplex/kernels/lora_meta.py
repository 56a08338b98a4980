"""Per-forward grouping of tokens by LoRA slot, shared by every LoRA layer of the forward."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loraplex.kernels.segments import num_segment_tiles

MAX_SLICES = 3  # output slices one launch serves: q/k/v or gate/up of a fused projection
LORA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class LoRAKernelMeta:
    """Tokens grouped by LoRA slot for `lora_shrink` / `lora_expand`.

    Built once per forward with fixed shapes for a given token count and no host-device
    synchronisation, so the decode path can be captured in a CUDA graph. Segment k holds the
    tokens `sorted_token_ids[segment_starts[k]:segment_starts[k + 1]]`, which all use slot
    `segment_slots[k]`; active slots come first in ascending order, the remaining segments are
    empty. Base-model tokens (slot -1) sit after every segment and are never touched.
    """

    token_lora: torch.Tensor  # [T] int32: each token's slot, -1 = base model
    token_slots: torch.Tensor  # [T] int32: token_lora with out-of-range slots made -1
    sorted_token_ids: torch.Tensor  # [T] int32: token indices grouped by slot, base-model last
    segment_starts: torch.Tensor  # [max_segments + 1] int32: segment bounds in sorted_token_ids
    segment_slots: torch.Tensor  # [max_segments] int32: slot of each segment, -1 when empty
    num_tokens: int  # T
    max_loras: int  # number of slots; valid slot values are 0 .. max_loras - 1
    prefill: bool  # selects the kernels' prefill (long segments) or decode launch parameters
    # Segment of every tile, per tile height, made on first use and shared by later layers.
    _tile_segments: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def max_segments(self) -> int:
        """An upper bound on the distinct slots of the batch, known without reading the GPU."""
        return self.segment_slots.shape[0]

    def tile_segments(self, block_m: int) -> torch.Tensor:
        """[num_segment_tiles(T, max_segments, block_m)] int32: the segment each tile of
        `block_m` tokens belongs to (tiling as in `segments`), so a kernel program finds its
        segment with one load instead of a binary search of dependent loads."""
        tiles = self._tile_segments.get(block_m)
        if tiles is None:
            device = self.segment_starts.device
            segments = torch.arange(self.max_segments, dtype=torch.int32, device=device)
            first_tiles = self.segment_starts[:-1] // block_m + segments
            count = num_segment_tiles(self.num_tokens, self.max_segments, block_m)
            tile_ids = torch.arange(count, dtype=torch.int32, device=device)
            tiles = torch.searchsorted(first_tiles, tile_ids, right=True, out_int32=True) - 1
            self._tile_segments[block_m] = tiles
        return tiles

    @classmethod
    def build(
        cls, token_lora: torch.Tensor, max_loras: int, *, prefill: bool = False
    ) -> LoRAKernelMeta:
        """Group the tokens of one forward by slot.

        token_lora: [T] int32 slot per token, -1 for the base model. max_loras: the number of
        GPU slots. prefill: True when the batch holds prompt chunks (long runs of one adapter),
        False for decode batches (about one token per sequence).
        Slot values are checked when token_lora is on the CPU; on a GPU a check would need a
        synchronisation, so there an out-of-range slot is treated as the base model.
        """
        if token_lora.dim() != 1 or token_lora.dtype != torch.int32:
            raise ValueError(
                f"token_lora must be a 1-D int32 tensor, got {token_lora.dtype} "
                f"{tuple(token_lora.shape)}"
            )
        if max_loras < 1:
            raise ValueError(f"max_loras must be at least 1, got {max_loras}")
        if token_lora.device.type == "cpu" and token_lora.numel():
            low, high = int(token_lora.min()), int(token_lora.max())
            if low < -1 or high >= max_loras:
                raise ValueError(
                    f"token_lora values must lie in [-1, {max_loras - 1}], got [{low}, {high}]"
                )
        num_tokens = token_lora.shape[0]
        max_segments = min(num_tokens, max_loras)
        device = token_lora.device
        valid = (token_lora >= 0) & (token_lora < max_loras)
        keys = torch.where(valid, token_lora, max_loras)
        sorted_keys, order = torch.sort(keys, stable=True)
        is_first = torch.ones_like(valid)
        is_first[1:] = sorted_keys[1:] != sorted_keys[:-1]
        is_first &= sorted_keys < max_loras
        # Non-first tokens scatter into a spare last entry that is sliced away.
        segment = torch.cumsum(is_first, 0) - 1
        target = torch.where(is_first, segment, max_segments + 1)
        positions = torch.arange(num_tokens, dtype=torch.int32, device=device)
        starts = valid.sum(dtype=torch.int32).repeat(max_segments + 2)
        starts.scatter_(0, target, positions)
        slots = torch.full((max_segments + 2,), -1, dtype=torch.int32, device=device)
        slots.scatter_(0, target, sorted_keys)
        return cls(
            token_lora=token_lora,
            token_slots=torch.where(valid, token_lora, -1),
            sorted_token_ids=order.to(torch.int32),
            segment_starts=starts[: max_segments + 1],
            segment_slots=slots[:max_segments],
            num_tokens=num_tokens,
            max_loras=max_loras,
            prefill=prefill,
        )

    def check_compatible(self, num_tokens: int, num_slots: int, device: torch.device) -> None:
        """Raise ValueError unless this metadata fits a launch over `num_tokens` tokens and
        weights of `num_slots` slots on `device`."""
        if self.num_tokens != num_tokens:
            raise ValueError(
                f"meta was built for {self.num_tokens} tokens, the input has {num_tokens}"
            )
        if self.max_loras > num_slots:
            raise ValueError(f"meta allows {self.max_loras} slots, the weights hold {num_slots}")
        if self.sorted_token_ids.device != device:
            raise ValueError(f"meta is on {self.sorted_token_ids.device}, the input on {device}")
