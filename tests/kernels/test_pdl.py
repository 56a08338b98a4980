"""Programmatic dependent launch: a chain of decode kernels launched with PDL, eagerly and
inside a CUDA graph, computes exactly what the same chain computes without it (each kernel
waits for its predecessor before reading its output). Needs a Hopper GPU (`-m gpu`)."""

from __future__ import annotations

import pytest
import torch

from loraplex.kernels import pdl
from loraplex.kernels.gemv import gemv
from loraplex.kernels.launch_config import launch_config
from loraplex.kernels.rms_norm import rms_norm
from loraplex.kernels.silu_and_mul import silu_and_mul


def test_pdl_is_off_on_cpu():
    assert pdl.pdl_options(torch.device("cpu")) == {"PDL": False}


def _set_pdl(monkeypatch, on: bool) -> None:
    monkeypatch.setenv("LORAPLEX_PDL", "1" if on else "0")
    pdl._enabled.cache_clear()


@pytest.mark.gpu
def test_pdl_chain_matches_plain_launches_eagerly_and_in_a_graph(monkeypatch):
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("PDL needs compute capability 9.0")
    generator = torch.Generator(device="cuda").manual_seed(0)
    hidden, inter = 1024, 2816

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, device="cuda") * scale).bfloat16()

    x, residual, norm_weight = randn(1, hidden), randn(1, hidden), randn(hidden)
    gate_up, down = randn(2 * inter, hidden, scale=0.03), randn(hidden, inter, scale=0.02)
    # Both GEMV variants, each asking L2 for weights before its wait.
    default = launch_config("gemv", "default", x.device)
    dot = {**default, "tensor_cores": True, "block_n": 64, "block_k": 128, "prefetch_k": 512}
    fma = {**default, "tensor_cores": False, "block_n": 8, "block_k": 512, "prefetch_k": 4096}

    def chain():
        normed, summed = rms_norm(x, norm_weight, 1e-6, residual)
        act = silu_and_mul(gemv(normed, gate_up, config=dot))
        return gemv(act, down, config=fma) + summed

    _set_pdl(monkeypatch, False)
    want = chain()
    _set_pdl(monkeypatch, True)
    try:
        torch.testing.assert_close(chain(), want, rtol=0, atol=0)
        graph = torch.cuda.CUDAGraph()
        chain()  # compile before capture
        torch.cuda.synchronize()
        with torch.cuda.graph(graph):
            captured = chain()
        for step in range(3):
            x.copy_(randn(1, hidden))
            _set_pdl(monkeypatch, False)
            want = chain()
            graph.replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(captured, want, rtol=0, atol=0, msg=f"replay {step}")
            _set_pdl(monkeypatch, True)
    finally:
        pdl._enabled.cache_clear()
