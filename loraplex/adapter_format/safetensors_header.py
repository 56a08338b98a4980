"""A bounded parser of the safetensors header, run before any tensor byte is read.

Layout: 8 bytes little-endian header length N, N bytes of JSON
(`{"name": {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__": {...}}`), then the
data buffer that the offsets index. A hostile file may claim a huge header, overlapping or
out-of-range offsets, or sizes that disagree with the shape; each is refused here with a message
that says which, so that a loader given an accepted file cannot be made to over-read or
over-allocate.

Standard library only: the engine's loader imports this module too.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A LoRA for an 80-layer model with every projection targeted has ~1,100 tensors (~200 KB of JSON).
MAX_HEADER_BYTES = 8 * 1024 * 1024
MAX_TENSORS = 100_000
MAX_DIMENSIONS = 8
DTYPE_SIZES = {"F16": 2, "BF16": 2, "F32": 4}
METADATA_KEY = "__metadata__"


class SafetensorsHeaderError(ValueError):
    """The file is not a well-formed safetensors file within our limits."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # "F16", "BF16" or "F32"
    shape: tuple[int, ...]
    start: int  # offset of the first byte in the data buffer
    end: int  # offset one past the last byte

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsIndex:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_offset: int  # where the data buffer starts in the file (8 + header length)


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise SafetensorsHeaderError(f"safetensors header repeats the key {key!r}")
        result[key] = value
    return result


def read_safetensors_index(
    path: Path, *, max_header_bytes: int = MAX_HEADER_BYTES
) -> SafetensorsIndex:
    """Parse and check the header of the safetensors file at `path` without reading tensor data."""
    file_size = path.stat().st_size
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise SafetensorsHeaderError(
                "safetensors file is shorter than its 8-byte header length"
            )
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > max_header_bytes:
            raise SafetensorsHeaderError(
                f"safetensors header claims {header_length} bytes, above the limit of "
                f"{max_header_bytes} bytes"
            )
        if header_length > file_size - 8:
            raise SafetensorsHeaderError(
                f"safetensors header claims {header_length} bytes but the file has only "
                f"{file_size - 8} after the length field"
            )
        header_bytes = stream.read(header_length)
    return parse_header(header_bytes, data_length=file_size - 8 - header_length)


def parse_header(header_bytes: bytes, *, data_length: int) -> SafetensorsIndex:
    """Check a raw header against a data buffer of `data_length` bytes."""
    try:
        header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=_reject_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsHeaderError(f"safetensors header is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise SafetensorsHeaderError("safetensors header must be a JSON object")
    metadata = _check_metadata(header.pop(METADATA_KEY, {}))
    if len(header) > MAX_TENSORS:
        raise SafetensorsHeaderError(f"safetensors file has more than {MAX_TENSORS} tensors")
    tensors = {name: _check_tensor(name, entry, data_length) for name, entry in header.items()}
    _check_buffer_coverage(tensors, data_length)
    return SafetensorsIndex(tensors=tensors, metadata=metadata, data_offset=8 + len(header_bytes))


def _check_metadata(metadata: Any) -> dict[str, str]:
    if not isinstance(metadata, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
    ):
        raise SafetensorsHeaderError("safetensors __metadata__ must map strings to strings")
    return metadata


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tensor(name: str, entry: Any, data_length: int) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsHeaderError(
            f"tensor {name!r}: entry must have exactly dtype, shape and data_offsets"
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise SafetensorsHeaderError(
            f"tensor {name!r} has dtype {dtype!r}; allowed dtypes are F16, BF16 and F32"
        )
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMENSIONS
        or not all(_is_int(dim) and dim >= 0 for dim in shape)
    ):
        raise SafetensorsHeaderError(f"tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
        raise SafetensorsHeaderError(f"tensor {name!r} has invalid data_offsets {offsets!r}")
    start, end = offsets
    if not 0 <= start <= end <= data_length:
        raise SafetensorsHeaderError(
            f"tensor {name!r} data_offsets [{start}, {end}] fall outside the "
            f"{data_length}-byte data buffer"
        )
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - start != expected:
        raise SafetensorsHeaderError(
            f"tensor {name!r} occupies {end - start} bytes but shape {shape} of {dtype} "
            f"needs {expected}"
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), start=start, end=end)


def _check_buffer_coverage(tensors: dict[str, TensorInfo], data_length: int) -> None:
    """Tensors must tile the data buffer exactly: no overlap, no gap, no trailing bytes."""
    position = 0
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].start, item[1].end)):
        if info.start != position:
            problem = "overlaps the previous tensor" if info.start < position else "leaves a gap"
            raise SafetensorsHeaderError(f"tensor {name!r} at offset {info.start} {problem}")
        position = info.end
    if position != data_length:
        raise SafetensorsHeaderError(
            f"safetensors data buffer has {data_length - position} bytes that no tensor uses"
        )
