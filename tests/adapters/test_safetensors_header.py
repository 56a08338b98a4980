from __future__ import annotations

import struct

import pytest
import torch
from safetensors.torch import save_file

from loraplex.adapter_format.safetensors_header import (
    SafetensorsHeaderError,
    read_safetensors_index,
)
from tests.adapters.support import raw_safetensors


def _write(tmp_path, content: bytes):
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    return path


def test_reads_what_safetensors_writes(tmp_path):
    path = tmp_path / "ok.safetensors"
    tensors = {
        "a": torch.zeros(3, 5, dtype=torch.float16),
        "b": torch.ones(2, dtype=torch.bfloat16),
        "c": torch.ones(4, 4, dtype=torch.float32),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
    }
    save_file(tensors, str(path), metadata={"format": "pt"})
    index = read_safetensors_index(path)
    assert index.metadata == {"format": "pt"}
    assert index.tensors["a"].dtype == "F16" and index.tensors["a"].shape == (3, 5)
    assert index.tensors["b"].dtype == "BF16" and index.tensors["b"].nbytes == 4
    assert index.tensors["c"].nbytes == 64
    assert index.tensors["empty"].shape == (0, 3)
    header_length = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert index.data_offset == 8 + header_length


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x02", "shorter than its 8-byte"),
        (raw_safetensors({}, b"", claimed_header_length=10 * 1024**3), "above the limit"),
        (raw_safetensors({"t": _entry()}, b"\0" * 8, claimed_header_length=1_000_000), "only"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "not valid UTF-8 JSON"),
        (raw_safetensors([], b""), "must be a JSON object"),  # type: ignore[arg-type]
        (raw_safetensors({"t": _entry(offsets=(0, 800))}, b"\0" * 8), "outside"),
        (raw_safetensors({"t": _entry(offsets=(-8, 0))}, b"\0" * 8), "outside"),
        (raw_safetensors({"t": _entry(shape=(3,))}, b"\0" * 8), "needs 12"),
        (raw_safetensors({"t": _entry(dtype="I64", shape=(1,))}, b"\0" * 8), "allowed dtypes"),
        (raw_safetensors({"t": _entry(dtype="F64", shape=(1,))}, b"\0" * 8), "allowed dtypes"),
        (raw_safetensors({"t": _entry(shape=(2, -1))}, b"\0" * 8), "invalid shape"),
        (raw_safetensors({"t": _entry(shape=(True, 2))}, b"\0" * 8), "invalid shape"),
        (raw_safetensors({"t": _entry(offsets=(0, "8"))}, b"\0" * 8), "invalid data_offsets"),
        (raw_safetensors({"t": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "exactly dtype"),
        (raw_safetensors({"t": _entry(), "__metadata__": {"a": 1}}, b"\0" * 8), "__metadata__"),
        (
            raw_safetensors({"a": _entry(), "b": _entry(offsets=(4, 12))}, b"\0" * 12),
            "overlaps",
        ),
        (raw_safetensors({"a": _entry(offsets=(4, 12))}, b"\0" * 12), "gap"),
        (raw_safetensors({"a": _entry()}, b"\0" * 16), "no tensor uses"),
    ],
)
def test_malformed_headers_are_refused(tmp_path, content, message):
    with pytest.raises(SafetensorsHeaderError, match=message):
        read_safetensors_index(_write(tmp_path, content))


def test_duplicate_keys_are_refused(tmp_path):
    entry = '{"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'
    header = f'{{"t": {entry}, "t": {entry}}}'.encode()
    content = struct.pack("<Q", len(header)) + header + b"\0" * 8
    with pytest.raises(SafetensorsHeaderError, match="repeats the key 't'"):
        read_safetensors_index(_write(tmp_path, content))


def test_header_limit_is_configurable(tmp_path):
    path = _write(tmp_path, raw_safetensors({"t": _entry()}, b"\0" * 8))
    with pytest.raises(SafetensorsHeaderError, match="above the limit of 16"):
        read_safetensors_index(path, max_header_bytes=16)
