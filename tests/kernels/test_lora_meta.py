"""`LoRAKernelMeta.build`: tokens grouped by slot in fixed-shape tensors."""

from __future__ import annotations

import pytest
import torch

from loraplex.kernels import LoRAKernelMeta
from tests.kernels.lora_cases import token_slots


def _segments(meta: LoRAKernelMeta) -> list[tuple[int, list[int]]]:
    starts = meta.segment_starts.tolist()
    ids = meta.sorted_token_ids.tolist()
    return [
        (slot, ids[starts[k] : starts[k + 1]])
        for k, slot in enumerate(meta.segment_slots.tolist())
        if starts[k + 1] > starts[k]
    ]


@pytest.mark.parametrize("prefill", [True, False])
@pytest.mark.parametrize(("num_tokens", "adapters", "slots"), [(30, 1, 4), (30, 5, 8), (7, 7, 64)])
@pytest.mark.parametrize("base_every", [0, 3])
def test_segments_group_every_lora_token_once(prefill, num_tokens, adapters, slots, base_every):
    token_lora = token_slots(num_tokens, adapters, slots, prefill=prefill, base_every=base_every)
    meta = LoRAKernelMeta.build(token_lora, slots, prefill=prefill)
    segments = _segments(meta)
    expected = sorted({s for s in token_lora.tolist() if s >= 0})
    assert [slot for slot, _ in segments] == expected
    for slot, tokens in segments:
        assert tokens == sorted(tokens) and all(token_lora[t] == slot for t in tokens)
    grouped = sorted(t for _, tokens in segments for t in tokens)
    assert grouped == [t for t, s in enumerate(token_lora.tolist()) if s >= 0]
    assert sorted(meta.sorted_token_ids.tolist()) == list(range(num_tokens))


@pytest.mark.parametrize("num_tokens", [1, 5, 300])
def test_shapes_depend_only_on_token_count_and_slots(num_tokens):
    shapes = set()
    for adapters in (1, min(num_tokens, 4)):
        meta = LoRAKernelMeta.build(token_slots(num_tokens, adapters, 16, prefill=False), 16)
        shapes.add((meta.sorted_token_ids.shape, meta.segment_starts.shape, meta.max_segments))
    assert shapes == {((num_tokens,), (min(num_tokens, 16) + 1,), min(num_tokens, 16))}


def test_unused_segments_are_empty_and_marked():
    meta = LoRAKernelMeta.build(torch.tensor([2, -1, 2, 0], dtype=torch.int32), 4)
    assert meta.segment_slots.tolist() == [0, 2, -1, -1]
    assert meta.segment_starts.tolist() == [0, 1, 3, 3, 3]
    assert meta.sorted_token_ids.tolist()[:3] == [3, 0, 2]


def test_no_tokens():
    meta = LoRAKernelMeta.build(torch.zeros(0, dtype=torch.int32), 4)
    assert meta.max_segments == 0 and meta.segment_starts.tolist() == [0]


@pytest.mark.parametrize(
    ("token_lora", "max_loras", "message"),
    [
        (torch.tensor([0, 4], dtype=torch.int32), 4, r"in \[-1, 3\]"),
        (torch.tensor([0, -2], dtype=torch.int32), 4, r"in \[-1, 3\]"),
        (torch.tensor([0, 1]), 4, "1-D int32"),
        (torch.zeros(2, 2, dtype=torch.int32), 4, "1-D int32"),
        (torch.tensor([0], dtype=torch.int32), 0, "max_loras"),
    ],
)
def test_rejects_bad_slots(token_lora, max_loras, message):
    with pytest.raises(ValueError, match=message):
        LoRAKernelMeta.build(token_lora, max_loras)


@pytest.mark.parametrize("block_m", [1, 4, 16])
def test_tile_segments_cover_every_token_once(block_m):
    token_lora = token_slots(37, 5, 8, prefill=True, base_every=6)
    meta = LoRAKernelMeta.build(token_lora, 8, prefill=True)
    tiles = meta.tile_segments(block_m)
    assert tiles is meta.tile_segments(block_m), "computed once per forward"
    assert tiles.shape == (37 // block_m + meta.max_segments,)
    starts = meta.segment_starts.tolist()
    covered = []
    for tile, segment in enumerate(tiles.tolist()):
        first = (tile - (starts[segment] // block_m + segment)) * block_m
        length = starts[segment + 1] - starts[segment]
        covered += [starts[segment] + row for row in range(first, min(first + block_m, length))]
    assert sorted(covered) == list(range(starts[-1]))
