"""The plain (unquantized) GEMV for decode-sized batches against torch's matmul: under the
interpreter on CPU in fp32 / fp16, compiled on a GPU with `-m gpu` in bf16 / fp16."""

from __future__ import annotations

import pytest
import torch

from loraplex.kernels.gemv import gemv
from loraplex.kernels.launch_config import launch_config

CUDA_CORES = {"max_m": 4, "block_n": 16, "block_k": 32, "num_warps": 4, "num_stages": 1}
TENSOR_CORES = {**CUDA_CORES, "tensor_cores": True}
CPU_CONFIGS = pytest.mark.parametrize("config", [CUDA_CORES, TENSOR_CORES], ids=["fma", "dot"])


def _problem(rows, n, k, dtype, device, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=generator).to(dtype).to(device)
    weight = (torch.randn(n, k, generator=generator) / k**0.5).to(dtype).to(device)
    bias = torch.randn(n, generator=generator).to(dtype).to(device)
    return x, weight, bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 40, 64), (3, 16, 100), (4, 33, 300)])
@pytest.mark.parametrize("with_bias", [False, True])
@CPU_CONFIGS
def test_gemv_matches_matmul(dtype, rows, n, k, with_bias, config):
    x, weight, bias = _problem(rows, n, k, dtype, "cpu", seed=n + k)
    bias = bias if with_bias else None
    got = gemv(x, weight, bias, config=config)
    want = torch.nn.functional.linear(
        x.float(), weight.float(), None if bias is None else bias.float()
    )
    assert got.dtype == dtype and got.shape == (rows, n)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)


@CPU_CONFIGS
def test_gemv_refuses_too_many_rows_and_mixed_dtypes(config):
    x, weight, _ = _problem(5, 8, 32, torch.float32, "cpu", seed=0)
    with pytest.raises(ValueError, match="at most 4 rows"):
        gemv(x, weight, config=config)
    with pytest.raises(ValueError, match="weight is torch.float16"):
        gemv(x[:1], weight.half(), config=config)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize(("n", "k"), [(6144, 4096), (4096, 14336), (1000, 4000)])
@pytest.mark.parametrize("tensor_cores", [False, True])
def test_gemv_gpu(dtype, rows, n, k, tensor_cores):
    x, weight, bias = _problem(rows, n, k, dtype, "cuda", seed=rows)
    config = {**launch_config("gemv", "default", x.device), "tensor_cores": tensor_cores}
    got = gemv(x, weight, bias, config=config)
    want = torch.nn.functional.linear(x.float(), weight.float(), bias.float())
    assert ((got.float() - want).norm() / want.norm()).item() < 1e-2


@pytest.mark.gpu
def test_engine_linears_use_the_gemv_up_to_the_configured_rows(monkeypatch):
    import loraplex.kernels.gemv as gemv_module
    from loraplex.engine.layers.linear import dense_linear

    calls = []

    def spy(x, weight, bias=None, config=None):
        calls.append(x.shape[0])
        return gemv(x, weight, bias, config)

    monkeypatch.setattr(gemv_module, "gemv", spy)
    monkeypatch.setattr(gemv_module, "linear_row_limit", lambda device: 2)
    x, weight, bias = _problem(4, 256, 512, torch.bfloat16, "cuda", seed=0)
    for rows in (1, 2, 3):
        got = dense_linear(x[:rows], weight, bias)
        want = torch.nn.functional.linear(x[:rows].float(), weight.float(), bias.float())
        assert ((got.float() - want).norm() / want.norm()).item() < 1e-2
    assert calls == [1, 2]


def _gated_problem(rows, n, k, dtype, device, seed):
    generator = torch.Generator().manual_seed(seed)
    gate_up = (torch.randn(rows, 2 * k, generator=generator) * 2).to(dtype).to(device)
    weight = (torch.randn(n, k, generator=generator) / k**0.5).to(dtype).to(device)
    return gate_up, weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 40, 64), (3, 16, 100)])
@CPU_CONFIGS
def test_gated_gemv_equals_the_activation_then_the_gemv(dtype, rows, n, k, config):
    """silu(gate) * up computed while loading x rounds exactly as the activation kernel does,
    so the fused down projection returns the unfused result bit for bit."""
    from loraplex.kernels.silu_and_mul import silu_and_mul

    gate_up, weight = _gated_problem(rows, n, k, dtype, "cpu", seed=rows + k)
    got = gemv(gate_up, weight, config=config, gated=True)
    want = gemv(silu_and_mul(gate_up), weight, config=config)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="gated GEMV takes"):
        gemv(gate_up[:, :k], weight, config=config, gated=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("tensor_cores", [False, True])
def test_gated_gemv_gpu(dtype, rows, tensor_cores):
    from loraplex.kernels.silu_and_mul import silu_and_mul

    gate_up, weight = _gated_problem(rows, 4096, 14336, dtype, "cuda", seed=rows)
    config = {**launch_config("gemv", "4096x14336", gate_up.device), "tensor_cores": tensor_cores}
    got = gemv(gate_up, weight, config=config, gated=True)
    assert torch.equal(got, gemv(silu_and_mul(gate_up), weight, config=config))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 40, 64), (3, 16, 100), (4, 33, 300)])
@pytest.mark.parametrize("with_residual", [False, True])
def test_normalizing_gemv_equals_the_norm_then_the_gemv(dtype, rows, n, k, with_residual):
    """Each program normalizes the rows itself; program 0 also writes x + residual."""
    from loraplex.kernels.gemv import RowNorm
    from loraplex.kernels.rms_norm import rms_norm

    x, weight, bias = _problem(rows, n, k, dtype, "cpu", seed=rows * k)
    g = torch.Generator().manual_seed(k)
    norm_weight = (1 + torch.randn(k, generator=g) / 4).to(dtype)
    residual = torch.randn(rows, k, generator=g).to(dtype) if with_residual else None
    residual_out = torch.full_like(x, float("nan")) if with_residual else None
    norm = RowNorm(norm_weight, 1e-5, residual, residual_out)
    got = gemv(x, weight, bias, config=TENSOR_CORES, norm=norm)
    normed = rms_norm(x, norm_weight, 1e-5, residual)
    if with_residual:
        normed, summed = normed
        assert torch.equal(residual_out, summed)
    want = gemv(normed, weight, bias, config=TENSOR_CORES)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_normalizing_gemv_refuses_what_it_cannot_do():
    from loraplex.kernels.gemv import RowNorm

    x, weight, _ = _problem(2, 16, 32, torch.float32, "cpu", seed=0)
    norm = RowNorm(torch.ones(32), 1e-6)
    with pytest.raises(ValueError, match="tensor cores"):
        gemv(x, weight, config=CUDA_CORES, norm=norm)
    with pytest.raises(ValueError, match="norm weight must be"):
        gemv(x, weight, config=TENSOR_CORES, norm=RowNorm(torch.ones(31), 1e-6))
    with pytest.raises(ValueError, match="residual_out"):
        gemv(x, weight, config=TENSOR_CORES, norm=RowNorm(torch.ones(32), 1e-6, x.clone()))
    with pytest.raises(ValueError, match="residual must be"):
        bad = RowNorm(torch.ones(32), 1e-6, x[:1].clone(), x.clone())
        gemv(x, weight, config=TENSOR_CORES, norm=bad)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 4])
@pytest.mark.parametrize("n", [6144, 28672])
def test_normalizing_gemv_gpu(dtype, rows, n):
    from loraplex.kernels.gemv import RowNorm
    from loraplex.kernels.rms_norm import rms_norm

    x, weight, _ = _problem(rows, n, 4096, dtype, "cuda", seed=rows)
    g = torch.Generator().manual_seed(n)
    norm_weight = (1 + torch.randn(4096, generator=g) / 4).to(dtype).cuda()
    residual = torch.randn(rows, 4096, generator=g).to(dtype).cuda()
    residual_out = torch.full_like(x, float("nan"))
    config = launch_config("gemv", f"{n}x4096", x.device)
    got = gemv(x, weight, config=config, norm=RowNorm(norm_weight, 1e-5, residual, residual_out))
    normed, summed = rms_norm(x, norm_weight, 1e-5, residual)
    assert torch.equal(residual_out, summed)
    want = gemv(normed, weight, config=config)
    assert ((got.float() - want.float()).norm() / want.float().norm()).item() < 1e-2
