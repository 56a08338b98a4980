"""Tiling of back-to-back variable-length segments without host-device synchronisation.

Segment `s` spans `[starts[s], starts[s + 1])` of a packed dimension of `total` rows (query
tokens of a sequence, tokens of a LoRA slot). Cutting every segment into tiles of `block` rows
and giving segment `s` the tile indices from `starts[s] // block + s` on needs only
`total // block + num_segments` programs, a number the host knows without reading `starts`:
each segment gets at least as many tiles as it needs, and surplus tiles exit at once.
"""

from __future__ import annotations

import triton
import triton.language as tl


def num_segment_tiles(total: int, num_segments: int, block: int) -> int:
    """Programs a launch over `num_segments` segments of `total` rows in tiles of `block` needs."""
    return total // block + num_segments


@triton.jit
def segment_of_tile(starts_ptr, num_segments, tile, BLOCK: tl.constexpr):
    """The segment that owns `tile`: the last `s` with `starts[s] // BLOCK + s <= tile`."""
    lo = 0
    hi = num_segments - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if tl.load(starts_ptr + mid) // BLOCK + mid <= tile:
            lo = mid
        else:
            hi = mid - 1
    return lo


@triton.jit
def tile_rows(starts_ptr, segment, tile, BLOCK: tl.constexpr):
    """(first row of `tile` inside its segment, segment length): rows start at the segment's own
    start, so a tile past the segment's end has `first >= length`."""
    start = tl.load(starts_ptr + segment)
    length = tl.load(starts_ptr + segment + 1) - start
    first = (tile - (start // BLOCK + segment)) * BLOCK
    return first, length
