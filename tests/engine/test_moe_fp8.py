"""FP8 mixture-of-experts models: checkpoints whose experts (and attention) are stored as fp8 with
`weight_scale` tensors load directly, per channel or per tensor, keep their routers in the model
dtype, and stay close to the full-precision model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from loraplex import LLM
from loraplex.engine.layers.fp8 import FP8_DTYPE, quantize_rows
from loraplex.engine.scoring import prompt_logits

# As for the dense fp8 tests: random tiny models have small top-1 margins.
QUALITY_TOP1 = 0.7
QUALITY_KL = 0.25
QUANTIZED_SUFFIXES = ("_proj.weight", ".w1.weight", ".w2.weight", ".w3.weight")
PROMPT = [0] + list(range(5, 300))


def tiny(arch: str) -> Path:
    from loraplex.modelgen import cached_model

    return cached_model("tiny", arch)


def write_fp8_checkpoint(src: Path, dst: Path, per_tensor: bool) -> Path:
    """Attention, shared-expert and expert weights in fp8 with `weight_scale` tensors, as FP8
    quantizers write them; routers and gates untouched."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    out = {}
    for name, tensor in tensors.items():
        if not name.endswith(QUANTIZED_SUFFIXES):
            out[name] = tensor
            continue
        if per_tensor:
            scale = tensor.abs().amax().float() / torch.finfo(FP8_DTYPE).max
            out[name] = (tensor.float() / scale).clamp(-448, 448).to(FP8_DTYPE)
            out[name.replace(".weight", ".weight_scale")] = scale.reshape(())
            out[name.replace(".weight", ".input_scale")] = torch.tensor(1.0)
        else:
            out[name], out[name.replace(".weight", ".weight_scale")] = quantize_rows(tensor)
    save_file(out, str(dst / "model.safetensors"))
    config = json.loads((dst / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic"}
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def agreement_and_kl(ref: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
    top1 = (ref.argmax(-1) == logits.argmax(-1)).float().mean().item()
    kl = torch.nn.functional.kl_div(
        logits.log_softmax(-1), ref.log_softmax(-1), log_target=True, reduction="batchmean"
    ).item()
    return top1, kl


@pytest.mark.parametrize("per_tensor", [False, True], ids=["per-channel", "per-tensor"])
@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_fp8_checkpoint_loads_and_stays_close(arch, per_tensor, tmp_path, test_device):
    source = tiny(arch)
    reference = LLM(str(source), dtype="float32", device=test_device, max_model_len=512)
    ref = prompt_logits(reference.llm_engine, PROMPT)
    folder = write_fp8_checkpoint(source, tmp_path / arch, per_tensor)
    llm = LLM(str(folder), dtype="float32", device=test_device, max_model_len=512)
    mlp = llm.llm_engine.model_runner.model.model.layers[1].mlp
    experts = mlp.experts
    assert experts.gate_up_proj.weight.dtype == FP8_DTYPE
    assert experts.down_proj.weight_scale.shape == experts.down_proj.weight.shape[:2]
    assert mlp.gate.weight.dtype == torch.float32  # the router is not quantized
    # Expert 5's up rows are the checkpoint's w3 / up_proj codes with their scales.
    up_name = "w3" if arch == "mixtral" else "up_proj"
    block = "block_sparse_moe" if arch == "mixtral" else "mlp"
    stored = load_file(str(folder / "model.safetensors"))
    key = f"model.layers.1.{block}.experts.5.{up_name}"
    inter = experts.down_proj.weight.shape[2]
    assert torch.equal(
        experts.gate_up_proj.weight[5, inter:].view(torch.uint8),
        stored[f"{key}.weight"].view(torch.uint8),
    )
    scale = stored[f"{key}.weight_scale"].float().reshape(-1).expand(inter)
    torch.testing.assert_close(experts.gate_up_proj.weight_scale[5, inter:], scale)
    top1, kl = agreement_and_kl(ref, prompt_logits(llm.llm_engine, PROMPT))
    assert top1 > QUALITY_TOP1 and kl < QUALITY_KL, (top1, kl)


def test_expert_scales_of_the_wrong_size_are_refused(tmp_path, test_device):
    folder = write_fp8_checkpoint(tiny("mixtral"), tmp_path / "bad", per_tensor=False)
    tensors = load_file(str(folder / "model.safetensors"))
    name = "model.layers.0.block_sparse_moe.experts.2.w2.weight_scale"
    tensors[name] = tensors[name][:-1]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=f"{name}.*weight_scale has 127 values for 128 rows"):
        LLM(str(folder), dtype="float32", device=test_device, max_model_len=128)
