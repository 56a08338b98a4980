"""The fused elementwise kernels of the decoder (RMSNorm with residual add, rotary embedding,
silu-and-mul) against their references: under the interpreter on CPU in fp16 / fp32, and
compiled on a GPU (`-m gpu`) in bf16 and fp16, where they must round exactly as the eager
formulas do (the engine's bf16 parity with transformers rests on it)."""

from __future__ import annotations

import pytest
import torch

from loraplex.engine.layers.fp8 import quantize_rows
from loraplex.engine.layers.rotary import RotaryEmbedding, rope_parameters
from loraplex.kernels.fp8_linear import fp8_outputs
from loraplex.kernels.reference import (
    FP8_DTYPE,
    rms_norm_ref,
    rotary_embedding_ref,
    silu_and_mul_ref,
)
from loraplex.kernels.rms_norm import rms_norm
from loraplex.kernels.rotary import rotary_embedding
from loraplex.kernels.silu_and_mul import silu_and_mul
from loraplex.kernels.store_kv import KVWrite, store_kv

CPU_DTYPES = [torch.float32, torch.float16]


def _rand(*shape, dtype, device, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(dtype).to(device)


def _check_rms_norm(tokens, hidden, dtype, device, with_residual, exact):
    x = _rand(tokens, hidden, dtype=dtype, device=device, seed=hidden) * 3
    weight = _rand(hidden, dtype=dtype, device=device, seed=1) + 1
    residual = _rand(tokens, hidden, dtype=dtype, device=device, seed=2) if with_residual else None
    got = rms_norm(x, weight, 1e-5, residual)
    want = rms_norm_ref(x, weight, 1e-5, residual)
    if not with_residual:
        got, want = (got,), (want,)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        if exact:
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        else:  # the variance sums in another order: one rounding step at most
            torch.testing.assert_close(g.float(), w.float(), rtol=1e-2, atol=1e-2)


def _rotary_problem(tokens, num_q, num_k, head_dim, dtype, device):
    params = rope_parameters(type("Cfg", (), {"rope_theta": 500000.0})())
    rope = RotaryEmbedding(head_dim, 4096, params).to(device)
    qkv = _rand(tokens, (num_q + 2 * num_k) * head_dim, dtype=dtype, device=device, seed=tokens)
    q, k, _ = qkv.split([num_q * head_dim, num_k * head_dim, num_k * head_dim], dim=-1)
    q = q.view(tokens, num_q, head_dim)
    k = k.view(tokens, num_k, head_dim)
    generator = torch.Generator().manual_seed(head_dim)
    positions = torch.randint(0, 4096, (tokens,), generator=generator).to(device)
    return rope, qkv, q, k, positions


def _check_rotary(tokens, num_q, num_k, head_dim, dtype, device, exact):
    rope, qkv, q, k, positions = _rotary_problem(tokens, num_q, num_k, head_dim, dtype, device)
    want_q, want_k = rotary_embedding_ref(positions, q, k, rope.cos, rope.sin)
    v_before = qkv[:, (num_q + num_k) * head_dim :].clone()
    got_q, got_k = rotary_embedding(positions, q, k, rope.cos, rope.sin)
    assert got_q.data_ptr() == q.data_ptr()  # in place, into the fused qkv tensor
    tol = {"rtol": 0, "atol": 0} if exact else {"rtol": 2e-3, "atol": 2e-3}
    torch.testing.assert_close(got_q, want_q, **tol)
    torch.testing.assert_close(got_k, want_k, **tol)
    assert torch.equal(qkv[:, (num_q + num_k) * head_dim :], v_before)  # v untouched


def _check_silu(tokens, intermediate, dtype, device, exact):
    x = _rand(tokens, 2 * intermediate, dtype=dtype, device=device, seed=intermediate) * 4
    got, want = silu_and_mul(x), silu_and_mul_ref(x)
    tol = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-3, "atol": 1e-3}
    assert got.shape == (tokens, intermediate)
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("hidden", [64, 96, 200])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(dtype, hidden, with_residual):
    _check_rms_norm(5, hidden, dtype, "cpu", with_residual, exact=False)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize(("num_q", "num_k", "head_dim"), [(4, 2, 64), (6, 6, 80), (5, 1, 32)])
def test_rotary(dtype, num_q, num_k, head_dim):
    _check_rotary(7, num_q, num_k, head_dim, dtype, "cpu", exact=False)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("intermediate", [64, 1500])
def test_silu_and_mul(dtype, intermediate):
    _check_silu(3, intermediate, dtype, "cpu", exact=False)


def test_empty_batches_launch_nothing():
    x = torch.empty(0, 64)
    assert rms_norm(x, torch.ones(64), 1e-6).shape == (0, 64)
    assert silu_and_mul(torch.empty(0, 128)).shape == (0, 64)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: rms_norm(torch.ones(2, 8), torch.ones(4), 1e-6), "weight"),
        (lambda: rms_norm(torch.ones(2, 8), torch.ones(8), 1e-6, torch.ones(3, 8)), "residual"),
        (lambda: silu_and_mul(torch.ones(2, 7)), "2 \\* intermediate"),
        (
            lambda: rotary_embedding(
                torch.zeros(2, dtype=torch.int64),
                torch.ones(2, 4, 8),
                torch.ones(2, 2, 6),
                torch.ones(16, 8),
                torch.ones(16, 8),
            ),
            "do not match",
        ),
    ],
)
def test_bad_shapes_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


GPU_DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("tokens", [1, 64, 4096])
def test_elementwise_gpu_round_like_eager(dtype, tokens):
    _check_rms_norm(tokens, 4096, dtype, "cuda", with_residual=True, exact=False)
    _check_rms_norm(tokens, 5120, dtype, "cuda", with_residual=False, exact=False)
    _check_rotary(tokens, 32, 8, 128, dtype, "cuda", exact=True)
    _check_rotary(tokens, 28, 4, 64, dtype, "cuda", exact=True)
    _check_silu(tokens, 14336, dtype, "cuda", exact=False)


def _check_rotary_with_cache_write(tokens, num_q, num_k, head_dim, dtype, device, cache_dtype):
    """The fused launch leaves q, k and both caches exactly as rotary then `store_kv` do."""
    rope, qkv, _, _, positions = _rotary_problem(tokens, num_q, num_k, head_dim, dtype, device)
    blocks, page = 8, 16
    generator = torch.Generator().manual_seed(7)
    slots = torch.randperm(blocks * page, generator=generator)[:tokens].to(device)
    slots[::5] = -1  # padding tokens write nothing
    scale = torch.tensor(0.5, device=device) if cache_dtype == FP8_DTYPE else None
    caches = []
    for fused in (False, True):
        work = qkv.clone()
        wq, wk, _ = work.split([num_q * head_dim, num_k * head_dim, num_k * head_dim], dim=-1)
        wq, wk = wq.view(tokens, num_q, head_dim), wk.view(tokens, num_k, head_dim)
        wv = work[:, (num_q + num_k) * head_dim :].view(tokens, num_k, head_dim)
        shape = (blocks, page, num_k, head_dim)
        k_cache = torch.full(shape, 3.0, device=device).to(cache_dtype)  # poisoned
        v_cache = torch.full(shape, 3.0, device=device).to(cache_dtype)
        if fused:
            kv = KVWrite(wv, k_cache, v_cache, slots, scale, scale)
            rotary_embedding(positions, wq, wk, rope.cos, rope.sin, kv=kv)
        else:
            rotary_embedding(positions, wq, wk, rope.cos, rope.sin)
            store_kv(wk, wv, k_cache, v_cache, slots, scale, scale)
        caches.append((work, k_cache.float(), v_cache.float()))
    for separate, fused in zip(caches[0], caches[1], strict=True):
        torch.testing.assert_close(fused, separate, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("cache", ["same", "fp8"])
def test_rotary_can_write_the_kv_cache_in_the_same_launch(dtype, cache):
    cache_dtype = FP8_DTYPE if cache == "fp8" else dtype
    _check_rotary_with_cache_write(11, 4, 2, 64, dtype, "cpu", cache_dtype)


def test_rotary_cache_write_is_checked_like_store_kv():
    rope, _, q, k, positions = _rotary_problem(3, 4, 2, 64, torch.float32, "cpu")
    cache = torch.zeros(2, 16, 2, 64)
    bad_slots = torch.zeros(3, dtype=torch.int32)
    with pytest.raises(ValueError, match="slot_mapping must be int64"):
        rotary_embedding(
            positions, q, k, rope.cos, rope.sin, kv=KVWrite(k, cache, cache, bad_slots)
        )


@pytest.mark.gpu
@pytest.mark.parametrize("cache", ["same", "fp8"])
def test_rotary_with_cache_write_gpu(cache):
    cache_dtype = FP8_DTYPE if cache == "fp8" else torch.bfloat16
    _check_rotary_with_cache_write(64, 32, 8, 128, torch.bfloat16, "cuda", cache_dtype)


def _fp8_steps_apart(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """|got - want| in units of the float8_e4m3fn spacing at the larger magnitude."""
    got, want = got.float(), want.float()
    magnitude = torch.maximum(got.abs(), want.abs()).clamp_min(2.0**-6)
    return (got - want).abs() / 2.0 ** (torch.floor(torch.log2(magnitude)) - 3)


def _check_quantized_outputs(dtype, device, exact):
    """RMSNorm and silu-and-mul hand back `quantize_rows` of what they output: the same scales,
    and the same fp8 values. The CPU interpreter converts some floats to fp8 wrongly (to the
    neighbouring value; subnormals to zero; and where rounding up carries into the exponent,
    to half the right value), so there the check allows exactly those."""
    x = _rand(5, 200, dtype=dtype, device=device, seed=1)
    residual = _rand(5, 200, dtype=dtype, device=device, seed=2)
    weight = _rand(200, dtype=dtype, device=device, seed=3) + 1
    gate_up = _rand(5, 600, dtype=dtype, device=device, seed=4) * 3
    norm_q = fp8_outputs(5, 200, torch.device(device))
    normed, _ = rms_norm(x, weight, 1e-5, residual, quantized=norm_q)
    act_q = fp8_outputs(5, 300, torch.device(device))
    act = silu_and_mul(gate_up, quantized=act_q)
    for out, (q, scale) in ((normed, norm_q), (act, act_q)):
        want_q, want_scale = quantize_rows(out)
        assert torch.equal(scale, want_scale)
        steps = _fp8_steps_apart(q, want_q)
        if not exact:
            subnormal = torch.maximum(q.float().abs(), want_q.float().abs()) < 2.0**-6
            lost_carry = q.float() * 2 == want_q.float()
            steps = torch.where(subnormal | lost_carry, 0.0, steps)
        assert steps.max() <= (0 if exact else 1), steps.max()


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_norm_and_activation_can_quantize_their_output(dtype):
    _check_quantized_outputs(dtype, "cpu", exact=False)


def test_quantized_outputs_of_the_wrong_shape_are_refused():
    x = torch.randn(3, 64)
    with pytest.raises(ValueError, match=r"q must be fp8 \[3, 64\]"):
        rms_norm(x, torch.ones(64), 1e-5, quantized=fp8_outputs(3, 32, x.device))
    with pytest.raises(ValueError, match=r"scale must be float32 \[3, 1\]"):
        silu_and_mul(torch.randn(3, 64), quantized=(fp8_outputs(3, 32, x.device)[0], torch.ones(3)))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
def test_quantized_outputs_gpu(dtype):
    _check_quantized_outputs(dtype, "cuda", exact=True)
