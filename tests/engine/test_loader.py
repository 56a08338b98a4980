"""Checkpoint tensors come straight from the memory-mapped safetensors file: the same values
as the safetensors library reads, every dtype a checkpoint holds, nothing written back to the
file, and a clear error for a tensor the file does not hold."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraplex.engine.loader import iterate_tensors


def _checkpoint(tmp_path):
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(5, 7, generator=generator).to(torch.bfloat16),
        "b.weight": torch.randn(3, 4, generator=generator).to(torch.float8_e4m3fn),
        "b.weight_scale": torch.tensor(0.25),
        "c.ids": torch.arange(6, dtype=torch.int64).view(2, 3),
        "d.half": torch.randn(9, generator=generator).half(),
        "e.empty": torch.empty(0, 4),
    }
    save_file(tensors, str(tmp_path / "model.safetensors"))
    return tensors


def test_tensors_equal_what_safetensors_reads(tmp_path):
    _checkpoint(tmp_path)
    want = load_file(str(tmp_path / "model.safetensors"))
    got = dict(iterate_tensors(tmp_path))
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape, name
        assert torch.equal(
            got[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)
        ), name


def test_writing_a_mapped_tensor_leaves_the_file_alone(tmp_path):
    _checkpoint(tmp_path)
    path = tmp_path / "model.safetensors"
    before = path.read_bytes()
    for _, tensor in iterate_tensors(tmp_path):
        tensor.view(-1).view(torch.uint8).fill_(7)  # copy-on-write pages
    assert path.read_bytes() == before


def _rewrite_header(path, edit):
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    edit(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h["a.weight"].update(dtype="C64"), "'a.weight' has unsupported dtype C64"),
        (lambda h: h["a.weight"].update(data_offsets=[0, 10**9]), "'a.weight' lies outside"),
    ],
)
def test_a_tensor_the_file_cannot_hold_is_refused(tmp_path, edit, message):
    _checkpoint(tmp_path)
    _rewrite_header(tmp_path / "model.safetensors", edit)
    with pytest.raises(ValueError, match=message):
        dict(iterate_tensors(tmp_path))
