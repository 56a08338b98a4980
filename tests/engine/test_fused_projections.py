"""At decode sizes the projections compute their input inside their GEMV: the MLP's down
projection takes silu(gate) * up, and the projections after a norm (qkv, gate_up) normalize
their rows themselves. Everywhere else (large batches, fp8 weights, LoRA, CPU) the activation
or norm runs first. Both give the same result."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import loraplex.kernels.gemv as gemv_module
from loraplex.engine.layers import linear
from loraplex.engine.layers.linear import LinearBase, MergedColumnParallelLinear
from loraplex.engine.layers.norm import DeferredNorm, RMSNorm
from loraplex.engine.models.llama import LlamaMLP
from loraplex.kernels.reference import rms_norm_ref

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
    monkeypatch.setattr(linear, "uses_gemv", lambda x: x.dim() == 2 and x.shape[0] <= GEMV_ROWS)
    activations = _count_activations(mlp)
    x = torch.randn(GEMV_ROWS + 2, HIDDEN, generator=torch.Generator().manual_seed(1)).half()
    for rows in (1, GEMV_ROWS, GEMV_ROWS + 2):
        got = mlp(x[:rows])
        torch.testing.assert_close(got.float(), _reference(mlp, x[:rows]), rtol=2e-2, atol=2e-2)
    assert activations == [GEMV_ROWS + 2]  # only the batch too large for the GEMV


def test_fp8_down_projections_take_the_activation(mlp, monkeypatch):
    monkeypatch.setattr(linear, "uses_gemv", lambda x: x.dim() == 2)
    x = torch.randn(2, HIDDEN, generator=torch.Generator().manual_seed(2)).half()
    mlp.down_proj.quantize_fp8_()
    assert mlp.down_proj.forward_gated(mlp.gate_up_proj(x)) is None
    activations = _count_activations(mlp)
    mlp(x)
    assert activations == [2]


def test_a_wrapped_down_projection_takes_the_activation(mlp, monkeypatch):
    """A LoRA wrapper's own product needs the activation, so the MLP does not fuse it."""
    monkeypatch.setattr(linear, "uses_gemv", lambda x: x.dim() == 2)

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


# ---- norms deferred to the projection they feed -------------------------------------------

TENSOR_CORES = {"max_m": 4, "block_n": 16, "block_k": 32, "num_warps": 4, "num_stages": 1,
                "tensor_cores": True}  # fmt: skip


def _norm_and_projection():
    g = torch.Generator().manual_seed(4)
    norm = RMSNorm(HIDDEN, eps=1e-5)
    proj = MergedColumnParallelLinear(HIDDEN, [INTER, INTER])
    with torch.no_grad():
        norm.weight.copy_(1 + torch.randn(HIDDEN, generator=g) / 4)
        proj.weight.copy_(torch.randn(proj.weight.shape, generator=g) / HIDDEN**0.5)
    return norm.half(), proj.half()


@pytest.fixture
def gemv_on_cpu(monkeypatch):
    """The decode-size GEMV path, run by the interpreter on CPU tensors."""
    monkeypatch.setattr(linear, "uses_gemv", lambda x: x.dim() == 2 and x.shape[0] <= GEMV_ROWS)
    monkeypatch.setattr(gemv_module, "shape_config", lambda *args: TENSOR_CORES)


@pytest.mark.parametrize("fused", [True, False])
def test_a_deferred_norm_equals_the_norm_then_the_projection(gemv_on_cpu, monkeypatch, fused):
    monkeypatch.setattr(LinearBase, "fuses_norm", property(lambda self: fused))
    if fused:  # the GEMV normalizes: nothing runs the norm on its own
        monkeypatch.setattr(DeferredNorm, "materialize", lambda self: pytest.fail("norm ran"))
    norm, proj = _norm_and_projection()
    norm.defer_to_consumer = True
    g = torch.Generator().manual_seed(5)
    x = torch.randn(GEMV_ROWS + 1, HIDDEN, generator=g).half()
    residual = torch.randn(GEMV_ROWS + 1, HIDDEN, generator=g).half()
    for rows in (1, GEMV_ROWS, GEMV_ROWS + 1):
        want_normed, want_sum = rms_norm_ref(x[:rows], norm.weight, norm.eps, residual[:rows])
        normed, summed = norm(x[:rows], residual[:rows])
        assert isinstance(normed, DeferredNorm) == (rows <= GEMV_ROWS)
        got = proj(normed)  # fills `summed` when deferred
        torch.testing.assert_close(summed, want_sum, rtol=0, atol=0)
        torch.testing.assert_close(got, proj(want_normed), rtol=2e-3, atol=2e-3)
    first = norm(x[:1])  # the first layer's norm has no residual
    assert isinstance(first, DeferredNorm)
    torch.testing.assert_close(
        proj(first), proj(rms_norm_ref(x[:1], norm.weight, norm.eps)), rtol=2e-3, atol=2e-3
    )


def test_norms_defer_only_to_plain_projections_that_fuse(monkeypatch):
    from loraplex.engine.models.llama import LlamaDecoderLayer

    cfg = SimpleNamespace(
        hidden_size=HIDDEN, intermediate_size=INTER, hidden_act="silu", num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, model_type="llama",
        rope_theta=10000.0,
    )  # fmt: skip
    layer = LlamaDecoderLayer(cfg, 0, LlamaMLP(cfg))
    layer.defer_norms_to_projections()  # on CPU no GEMV runs
    assert not layer.input_layernorm.defer_to_consumer
    assert not layer.post_attention_layernorm.defer_to_consumer
    monkeypatch.setattr(LinearBase, "fuses_norm", property(lambda self: True))
    layer.defer_norms_to_projections()
    assert layer.input_layernorm.defer_to_consumer
    assert layer.post_attention_layernorm.defer_to_consumer
    layer.self_attn.qkv_proj = torch.nn.Identity()  # as a LoRA wrapper: not a plain linear
    layer.defer_norms_to_projections()
    assert not layer.input_layernorm.defer_to_consumer
    assert layer.post_attention_layernorm.defer_to_consumer


@pytest.mark.gpu
def test_fused_projections_decode_like_unfused_ones_in_bf16(tiny_model_dirs, monkeypatch):
    """The engine on CUDA in bf16 at batch sizes the GEMV takes, with the norm and activation
    fusions on and off: the products differ only in the order of the rms sum, so the greedy
    tokens agree almost everywhere (random weights have near ties)."""
    from loraplex import LLM, SamplingParams

    llm = LLM(tiny_model_dirs["llama"], dtype="bfloat16", device="cuda", enforce_eager=True,
              max_num_seqs=4)  # fmt: skip
    layers = llm.llm_engine.model_runner.model.model.layers
    assert all(layer.input_layernorm.defer_to_consumer for layer in layers)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, 200, (n,), generator=g).tolist() for n in (3, 9, 17, 30)]
    params = SamplingParams(temperature=0, max_tokens=24)

    def tokens() -> list[int]:
        return [t for o in llm.generate(prompts, params) for t in o.outputs[0].token_ids]

    fused = tokens()
    for layer in layers:
        layer.input_layernorm.defer_to_consumer = False
        layer.post_attention_layernorm.defer_to_consumer = False
    monkeypatch.setattr(linear.RowParallelLinear, "forward_gated", lambda self, gate_up: None)
    unfused = tokens()
    agreement = sum(a == b for a, b in zip(fused, unfused, strict=True)) / len(fused)
    print(f"greedy token agreement, fused vs unfused projections (bf16): {agreement:.1%}")
    assert agreement >= 0.9


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_engine_decodes_the_same_with_fused_projections(tiny_model_dirs, monkeypatch, arch):
    """The whole decoder with every decode-size projection computing its input (norms deferred
    across layers, residual sums written by the GEMVs, the gated down projection), run by the
    interpreter on CPU: the same greedy tokens as with the norm and activation launched apart."""
    from loraplex import LLM, SamplingParams

    monkeypatch.setattr(linear, "uses_gemv", lambda x: x.dim() == 2 and x.shape[0] <= GEMV_ROWS)
    monkeypatch.setattr(gemv_module, "shape_config", lambda *args: TENSOR_CORES)
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(4, 200, (n,), generator=g).tolist() for n in (1, 7, 16)]
    params = SamplingParams(temperature=0, max_tokens=8)
    launches: list[str] = []
    plain_gemv = gemv_module.gemv

    def counted_gemv(x, weight, bias=None, config=None, gated=False, norm=None):
        launches.append("norm" if norm is not None else "gated" if gated else "plain")
        return plain_gemv(x, weight, bias, config, gated, norm)

    monkeypatch.setattr(gemv_module, "gemv", counted_gemv)

    def greedy(fused: bool) -> list[list[int]]:
        monkeypatch.setattr(LinearBase, "fuses_norm", property(lambda self: fused))
        if not fused:
            monkeypatch.setattr(
                linear.RowParallelLinear, "forward_gated", lambda self, gate_up: None
            )
        llm = LLM(tiny_model_dirs[arch], dtype="float32", max_num_seqs=GEMV_ROWS)
        layers = llm.llm_engine.model_runner.model.model.layers
        assert all(layer.input_layernorm.defer_to_consumer == fused for layer in layers)
        return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]

    fused = greedy(True)
    assert {"norm", "gated"} <= set(launches)
    launches.clear()
    assert fused == greedy(False)
    assert set(launches) == {"plain"}
