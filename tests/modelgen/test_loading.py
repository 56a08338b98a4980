"""The tiny models load in transformers exactly as the presets describe them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from loraplex.modelgen import ARCHITECTURES, PRESETS

TINY = PRESETS["tiny"]


def load(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    return model.eval(), info


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_loads_without_missing_or_unexpected_weights(tiny_models, transformers_warnings, arch):
    model, info = load(tiny_models[arch])
    assert info["missing_keys"] == set()
    assert info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set()
    assert info["error_msgs"] == []
    assert transformers_warnings == []
    assert type(model).__name__ == ARCHITECTURES[arch]
    assert model.dtype == torch.float32


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_config_has_the_preset_shapes(tiny_models, arch):
    config = json.loads((tiny_models[arch] / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURES[arch]]
    assert config["model_type"] == arch
    # Mixtral's MLP is its experts, so its intermediate_size is an expert's.
    expected = {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128 if arch == "mixtral" else 256,
        "vocab_size": 2048,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "dtype": "float32",
        "torch_dtype": "float32",
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
    }
    assert {key: config[key] for key in expected} == expected
    assert config["rope_parameters"]["rope_theta"] == TINY.rope_theta
    generation = json.loads((tiny_models[arch] / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (0, 1)
    assert generation["pad_token_id"] == 2


def test_llama_uses_llama3_rope_scaling(tiny_models):
    model, _ = load(tiny_models["llama"])
    assert model.config.rope_parameters["rope_type"] == "llama3"
    assert model.config.rope_parameters["factor"] == 8.0
    assert model.config.rope_parameters["original_max_position_embeddings"] == 256
    assert not model.config.tie_word_embeddings
    config = json.loads((tiny_models["llama"] / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == "llama3"


def test_mistral_has_a_sliding_window_that_changes_long_prompts(tiny_models):
    model, _ = load(tiny_models["mistral"])
    assert model.config.sliding_window == 64
    ids = torch.randint(5, 2048, (1, 200), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        windowed = model(ids).logits
        model.config.sliding_window = None
        full = model(ids).logits
    # Inside the window the masks agree; beyond it, the dropped keys change the outputs.
    torch.testing.assert_close(windowed[:, :64], full[:, :64])
    assert (windowed[:, 100:] - full[:, 100:]).abs().max() > 1e-2


def test_qwen2_ties_embeddings_and_has_nonzero_biases(tiny_models):
    path = tiny_models["qwen2"]
    with safe_open(path / "model.safetensors", framework="pt") as weights:
        names = set(weights.keys())
        biases = {n: weights.get_tensor(n) for n in names if n.endswith(".bias")}
    assert "lm_head.weight" not in names
    assert len(biases) == 3 * TINY.num_hidden_layers
    assert all((bias != 0).all() and bias.std() > 0.1 for bias in biases.values())
    model, _ = load(path)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(
        model.model.layers[0].self_attn.q_proj.bias, biases["model.layers.0.self_attn.q_proj.bias"]
    )


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_forward_gives_finite_logits_over_the_vocabulary(tiny_models, arch):
    model, _ = load(tiny_models[arch])
    ids = torch.tensor([[0, 17, 300, 1999, 42, 7]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 6, TINY.vocab_size)
    assert torch.isfinite(logits).all()
