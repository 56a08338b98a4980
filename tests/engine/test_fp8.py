"""FP8 weights (quantized at load or read from an FP8 checkpoint) and the FP8 KV cache."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraplex import LLM, SamplingParams
from loraplex.engine.layers.fp8 import FP8_DTYPE, expand_scale, fp8_linear, quantize_rows
from loraplex.engine.scoring import prompt_logits


@pytest.mark.parametrize("shape", [(7, 64), (1, 256), (33, 128)])
def test_quantize_rows_round_trip(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3
    x[0] = 0.0  # a zero row keeps a positive scale and dequantizes to zeros
    q, scale = quantize_rows(x)
    assert q.dtype == FP8_DTYPE and scale.shape == (shape[0], 1) and (scale > 0).all()
    back = q.float() * scale
    assert torch.equal(back[0], torch.zeros(shape[1]))
    # e4m3 keeps 3 mantissa bits: relative error of a normal value is at most 2**-4.
    big = x.abs() > scale * 2**-6 * 8
    assert ((back - x).abs()[big] <= x.abs()[big] * 2**-4 + 1e-7).all()
    assert back.abs().amax(dim=1).allclose(x.abs().amax(dim=1))


def test_fp8_linear_matches_the_float_product():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 128, generator=g)
    w = torch.randn(96, 128, generator=g) / 128**0.5
    bias = torch.randn(96, generator=g)
    q, scale = quantize_rows(w)
    out = fp8_linear(x, q, scale.view(-1), bias)
    ref = x @ w.t() + bias
    assert out.shape == (16, 96)
    assert ((out - ref).norm() / ref.norm()) < 0.05


def test_expand_scale():
    assert torch.equal(expand_scale(torch.tensor(0.5), 3), torch.full((3,), 0.5))
    assert torch.equal(expand_scale(torch.tensor([[1.0], [2.0]]), 2), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="3 values for 2"):
        expand_scale(torch.ones(3), 2)


# The tiny random model's logits are flat (small top-1 margins), so fp8 rounding flips more
# argmaxes than on a trained model; a wrong scale or layout drops agreement to chance (<1%).
QUALITY_TOP1 = 0.7
QUALITY_KL = 0.25


def agreement_and_kl(ref_logits, logits):
    top1 = (ref_logits.argmax(-1) == logits.argmax(-1)).float().mean().item()
    kl = torch.nn.functional.kl_div(
        logits.log_softmax(-1), ref_logits.log_softmax(-1), log_target=True, reduction="batchmean"
    ).item()
    return top1, kl


@pytest.fixture(scope="module")
def model_dir(tiny_model_dirs):
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="module")
def reference(model_dir, test_device):
    llm = LLM(model_dir, dtype="float32", device=test_device, max_model_len=512)
    ids = [0] + list(range(5, 400))
    return ids, prompt_logits(llm.llm_engine, ids)


def test_fp8_weights_stay_close_to_the_full_precision_model(model_dir, reference, test_device):
    ids, ref = reference
    llm = LLM(model_dir, dtype="float32", device=test_device, max_model_len=512, quantization="fp8")
    down = llm.llm_engine.model_runner.model.model.layers[0].mlp.down_proj
    assert down.weight.dtype == FP8_DTYPE and down.weight_scale.dtype == torch.float32
    top1, kl = agreement_and_kl(ref, prompt_logits(llm.llm_engine, ids))
    assert top1 > QUALITY_TOP1 and kl < QUALITY_KL, (top1, kl)


def test_fp8_kv_cache_stays_close(model_dir, reference, test_device):
    ids, ref = reference
    llm = LLM(
        model_dir, dtype="float32", device=test_device, max_model_len=512, kv_cache_dtype="fp8"
    )
    assert llm.llm_engine.model_runner.kv_dtype == FP8_DTYPE
    top1, kl = agreement_and_kl(ref, prompt_logits(llm.llm_engine, ids))
    assert top1 > QUALITY_TOP1 and kl < QUALITY_KL, (top1, kl)
    # Decoding reads the fp8 cache too.
    out = llm.generate([ids[:50]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 8


def write_fp8_checkpoint(src, dst, per_tensor: bool):
    """The tiny model's linear weights in fp8 with `weight_scale` tensors, as FP8 quantizers
    write them (per tensor, or per output channel as [N, 1])."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    out = {}
    for name, tensor in tensors.items():
        linear = name.endswith("_proj.weight")
        if not linear:
            out[name] = tensor
            continue
        if per_tensor:
            scale = tensor.abs().amax().float() / torch.finfo(FP8_DTYPE).max
            out[name] = (tensor.float() / scale).clamp(-448, 448).to(FP8_DTYPE)
            out[name.replace(".weight", ".weight_scale")] = scale.reshape(())
            out[name.replace(".weight", ".input_scale")] = torch.tensor(1.0)
        else:
            q, scale = quantize_rows(tensor)
            out[name] = q
            out[name.replace(".weight", ".weight_scale")] = scale
    save_file(out, str(dst / "model.safetensors"))
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_fp8_checkpoint_loads_directly_and_equals_load_time_quantization(
    model_dir, reference, tmp_path, test_device
):
    from pathlib import Path

    ids, ref = reference
    channel = write_fp8_checkpoint(Path(model_dir), tmp_path / "channel", per_tensor=False)
    from_checkpoint = LLM(str(channel), dtype="float32", device=test_device, max_model_len=512)
    assert from_checkpoint.llm_engine.config.model.quantization == "fp8"
    at_load = LLM(
        model_dir, dtype="float32", device=test_device, max_model_len=512, quantization="fp8"
    )
    a = prompt_logits(from_checkpoint.llm_engine, ids)
    b = prompt_logits(at_load.llm_engine, ids)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)

    tensor = write_fp8_checkpoint(Path(model_dir), tmp_path / "tensor", per_tensor=True)
    per_tensor = LLM(str(tensor), dtype="float32", device=test_device, max_model_len=512)
    top1, kl = agreement_and_kl(ref, prompt_logits(per_tensor.llm_engine, ids))
    assert top1 > QUALITY_TOP1 and kl < QUALITY_KL, (top1, kl)


def write_kv_scales(src, dst, scales: dict[str, torch.Tensor]):
    """The tiny model plus a safetensors file of KV-cache scales, as FP8 quantizers add them."""
    shutil.copytree(src, dst)
    save_file(scales, str(dst / "kv_scales.safetensors"))
    return dst


def test_fp8_kv_cache_scales_come_from_the_checkpoint(model_dir, reference, tmp_path, test_device):
    ids, ref = reference
    layers = json.loads((Path(model_dir) / "config.json").read_text())["num_hidden_layers"]
    scales = {}
    for i in range(layers):  # the names of two common quantizer formats, mixed
        if i % 2:
            scales[f"model.layers.{i}.self_attn.k_scale"] = torch.tensor(0.25 + i)
            scales[f"model.layers.{i}.self_attn.v_scale"] = torch.tensor([0.5])
        else:
            scales[f"model.layers.{i}.self_attn.k_proj.output_scale"] = torch.tensor(0.125)
    folder = write_kv_scales(model_dir, tmp_path / "scaled", scales)
    llm = LLM(
        str(folder), dtype="float32", device=test_device, max_model_len=512, kv_cache_dtype="fp8"
    )
    attention = llm.llm_engine.model_runner.attention_layers
    for i, layer in enumerate(attention):
        want_k, want_v = (0.25 + i, 0.5) if i % 2 else (0.125, 1.0)  # missing v: 1.0
        assert layer.k_scale.item() == want_k and layer.v_scale.item() == want_v
    top1, kl = agreement_and_kl(ref, prompt_logits(llm.llm_engine, ids))
    assert top1 > QUALITY_TOP1 and kl < QUALITY_KL, (top1, kl)


def test_kv_scales_are_ignored_without_an_fp8_cache(model_dir, reference, tmp_path, test_device):
    ids, ref = reference
    folder = write_kv_scales(
        model_dir, tmp_path / "scaled", {"model.layers.0.self_attn.kv_scale": torch.tensor(3.0)}
    )
    llm = LLM(str(folder), dtype="float32", device=test_device, max_model_len=512)
    assert torch.allclose(prompt_logits(llm.llm_engine, ids), ref, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("model.layers.0.self_attn.k_scale", torch.tensor(-1.0), "must be > 0"),
        ("model.layers.0.self_attn.v_scale", torch.tensor(float("nan")), "must be > 0"),
        ("model.layers.0.self_attn.k_scale", torch.ones(4), "per-head scales"),
        ("model.self_attn.k_scale", torch.tensor(1.0), "outside any layer"),
    ],
)
def test_bad_kv_scales_are_refused(model_dir, tmp_path, test_device, name, value, message):
    folder = write_kv_scales(model_dir, tmp_path / "bad", {name: value})
    with pytest.raises(ValueError, match=message):
        LLM(str(folder), dtype="float32", device=test_device, kv_cache_dtype="fp8")


def _set_fp8_outputs(llm, on: bool) -> list[bool]:
    """Turn the norms' and activations' quantized outputs on or off; returns what they were."""
    layers = llm.llm_engine.model_runner.model.model.layers
    modules = [m for layer in layers for m in (layer.input_layernorm,
               layer.post_attention_layernorm, layer.mlp.act)]  # fmt: skip
    before = [m.fp8_output for m in modules]
    for module in modules:
        module.fp8_output = on
    return before


def test_norms_hand_fp8_layers_their_quantized_input(model_dir, tiny_model_dirs, tmp_path):
    """With fp8 weights every norm and activation quantizes its output for the projection it
    feeds (one kernel instead of two on a GPU); the tokens, with and without adapters, are
    exactly those of quantizing inside the linear layers."""
    from loraplex import LoRARequest

    from .peft_adapters import make_adapters

    adapter = make_adapters(tiny_model_dirs["llama"], tmp_path, 1)[0]
    llm = LLM(
        model_dir, dtype="float32", device="cpu", max_model_len=256, quantization="fp8",
        enable_lora=True, max_lora_rank=16,
    )  # fmt: skip
    assert all(_set_fp8_outputs(llm, True))  # on by default for an fp8 model
    prompts = [[1, 5, 9, 33, 7], [1, 40, 41, 42]]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    loras = [LoRARequest("a", 1, str(adapter)), None]

    def tokens():
        return [o.outputs[0].token_ids for o in llm.generate(prompts, params, loras)]

    fused, fused_logits = tokens(), prompt_logits(llm.llm_engine, prompts[0])
    _set_fp8_outputs(llm, False)
    assert tokens() == fused
    assert torch.equal(prompt_logits(llm.llm_engine, prompts[0]), fused_logits)


def test_full_precision_models_keep_plain_activations(model_dir):
    llm = LLM(model_dir, dtype="float32", device="cpu", max_model_len=128)
    assert not any(_set_fp8_outputs(llm, False))
