"""At decode sizes the MLP's down projection computes silu(gate) * up inside its GEMV instead of
after an activation launch; everywhere else (large batches, fp8 weights, LoRA) the activation
runs first. Both give the same result."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from loraplex.engine.layers import linear
from loraplex.engine.models.llama import LlamaMLP

HIDDEN, INTER, GEMV_ROWS = 32, 48, 4


@pytest.fixture
def mlp():
    cfg = SimpleNamespace(hidden_size=HIDDEN, intermediate_size=INTER, hidden_act="silu")
    module = LlamaMLP(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=g) / param.shape[-1] ** 0.5)
    return module.half()


def _count_activations(mlp) -> list[int]:
    calls: list[int] = []
    mlp.act.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    return calls


def _reference(mlp, x):
    gate, up = mlp.gate_up_proj.weight.float().split(INTER)
    h = x.float()
    down = getattr(mlp.down_proj, "base", mlp.down_proj)
    return (torch.nn.functional.silu(h @ gate.T) * (h @ up.T)) @ down.weight.float().T


def test_decode_rows_skip_the_activation_launch(mlp, monkeypatch):
    # The GEMV runs on CUDA only; here it runs in the interpreter, for rows a GEMV would take.
    monkeypatch.setattr(linear, "_uses_gemv", lambda x: x.dim() == 2 and x.shape[0] <= GEMV_ROWS)
    activations = _count_activations(mlp)
    x = torch.randn(GEMV_ROWS + 2, HIDDEN, generator=torch.Generator().manual_seed(1)).half()
    for rows in (1, GEMV_ROWS, GEMV_ROWS + 2):
        got = mlp(x[:rows])
        torch.testing.assert_close(got.float(), _reference(mlp, x[:rows]), rtol=2e-2, atol=2e-2)
    assert activations == [GEMV_ROWS + 2]  # only the batch too large for the GEMV


def test_fp8_down_projections_take_the_activation(mlp, monkeypatch):
    monkeypatch.setattr(linear, "_uses_gemv", lambda x: x.dim() == 2)
    x = torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(2)).half()
    mlp.down_proj.quantize_fp8_()
    assert mlp.down_proj.forward_gated(mlp.gate_up_proj(x)) is None
    activations = _count_activations(mlp)
    mlp(x)
    assert activations == [2]


def test_a_wrapped_down_projection_takes_the_activation(mlp, monkeypatch):
    """A LoRA wrapper's own product needs the activation, so the MLP does not fuse it."""
    monkeypatch.setattr(linear, "_uses_gemv", lambda x: x.dim() == 2)

    class Wrapper(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

        def forward(self, x):
            return self.base(x)

    down = mlp.down_proj
    mlp.down_proj = Wrapper(down)
    activations = _count_activations(mlp)
    x = torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(3)).half()
    torch.testing.assert_close(mlp(x).float(), _reference(mlp, x), rtol=2e-2, atol=2e-2)
    assert activations == [2]
