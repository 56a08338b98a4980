"""The FP8 linear kernels against `quantize_rows` and the dequantize-and-multiply reference:
under the interpreter on CPU (fp16 / fp32 activations), compiled on a GPU with `-m gpu`."""

from __future__ import annotations

import pytest
import torch

from loraplex.engine.layers.fp8 import quantize_rows
from loraplex.kernels.fp8_linear import FP8_DTYPE, fp8_gemv, quantize_per_token
from loraplex.kernels.launch_config import launch_config

CUDA_CORES = {"max_m": 4, "block_n": 16, "block_k": 32, "num_warps": 4, "num_stages": 1}
TENSOR_CORES = {**CUDA_CORES, "tensor_cores": True}
CPU_CONFIGS = pytest.mark.parametrize("config", [CUDA_CORES, TENSOR_CORES], ids=["fma", "dot"])


def _exact_activations(rows, k, dtype, device, seed):
    """Rows whose per-token quantization needs no rounding: fp8 values times a power of two,
    with 448 in every row so the scale is exactly that power (the Triton 3.6 interpreter
    rounds some float -> fp8 conversions wrongly; compiled kernels are checked on random data)."""
    generator = torch.Generator().manual_seed(seed)
    q = (torch.randn(rows, k, generator=generator) * 60).to(FP8_DTYPE).float()
    q[:, 0] = 448.0
    q[1::2, 0] = -448.0
    powers = 2.0 ** torch.randint(-8, 2, (rows, 1), generator=generator).float()
    return (q * powers).to(dtype).to(device)


def _weights(n, k, device, seed):
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=generator)
    q, scale = quantize_rows(w)
    return q.to(device), scale.view(-1).to(device)


def _reference(x, weight, weight_scale, bias):
    q, scale = quantize_rows(x.float())
    out = (q.float() * scale) @ (weight.float() * weight_scale[:, None]).t()
    if bias is not None:
        out = out + bias.float()
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("k", [100, 20000])  # one read per row, or a loop over the row
def test_quantize_per_token_equals_quantize_rows(dtype, rows, k):
    x = _exact_activations(rows, k, dtype, "cpu", seed=rows)
    q, scale = quantize_per_token(x)
    want_q, want_scale = quantize_rows(x)
    torch.testing.assert_close(scale, want_scale, rtol=0, atol=0)
    assert torch.equal(q.float(), want_q.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("rows", "n", "k"), [(1, 40, 64), (3, 16, 100), (4, 33, 32), (2, 7, 300)])
@pytest.mark.parametrize("with_bias", [False, True])
@CPU_CONFIGS
def test_gemv_matches_reference(dtype, rows, n, k, with_bias, config):
    x = _exact_activations(rows, k, dtype, "cpu", seed=n)
    weight, weight_scale = _weights(n, k, "cpu", seed=k)
    bias = torch.randn(n).to(dtype) if with_bias else None
    got = fp8_gemv(x, weight, weight_scale, bias, config=config)
    assert got.dtype == dtype and got.shape == (rows, n)
    want = _reference(x, weight, weight_scale, bias)
    torch.testing.assert_close(got.float(), want, rtol=2e-3, atol=2e-3)


@CPU_CONFIGS
def test_gemv_refuses_what_it_cannot_do(config):
    weight, weight_scale = _weights(8, 32, "cpu", seed=0)
    with pytest.raises(ValueError, match="at most 4 rows"):
        fp8_gemv(torch.ones(5, 32), weight, weight_scale, config=config)
    with pytest.raises(ValueError, match="fp8"):
        fp8_gemv(torch.ones(2, 32), weight.float(), weight_scale, config=config)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 3, 4])
@pytest.mark.parametrize(("n", "k"), [(6144, 4096), (4096, 14336), (1008, 4000)])
@pytest.mark.parametrize(
    "variant",
    [{"tensor_cores": False}, {"tensor_cores": True}, {"tensor_cores": True, "native_fp8": True}],
    ids=["fma", "dot", "dot8"],
)
def test_fp8_kernels_gpu(dtype, rows, n, k, variant):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, k, generator=generator).to(dtype).cuda()
    weight, weight_scale = _weights(n, k, "cuda", seed=n)
    q, scale = quantize_per_token(x)
    want_q, want_scale = quantize_rows(x)
    torch.testing.assert_close(scale, want_scale, rtol=0, atol=0)
    assert torch.equal(q.float(), want_q.float())
    bias = torch.randn(n, generator=generator).to(dtype).cuda()
    config = {**launch_config("fp8_gemv", "default", x.device), "native_fp8": False, **variant}
    got = fp8_gemv(x, weight, weight_scale, bias, config=config)
    want = _reference(x, weight, weight_scale, bias)
    assert ((got.float() - want).norm() / want.norm()).item() < 1e-2
    scaled = torch._scaled_mm(
        q, weight.t(), scale_a=scale, scale_b=weight_scale.view(1, -1), bias=bias, out_dtype=dtype
    )
    assert ((got.float() - scaled.float()).norm() / scaled.float().norm()).item() < 1e-2
