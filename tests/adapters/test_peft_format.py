from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from loraplex.adapter_format.peft import (
    AdapterFormatError,
    BaseModelShape,
    load_adapter_tensors,
    parse_lora_config,
    validate_adapter_files,
)
from tests.adapters.conftest import BASE_CONFIG, RANK, TARGET_MODULES


def _write_adapter(tmp_path, config: bytes, weights: bytes):
    (tmp_path / "c.json").write_bytes(config)
    (tmp_path / "w.safetensors").write_bytes(weights)
    return tmp_path / "c.json", tmp_path / "w.safetensors"


def test_peft_adapter_is_accepted(peft_adapter, base_shape):
    spec = validate_adapter_files(
        peft_adapter.folder / "adapter_config.json",
        peft_adapter.folder / "adapter_model.safetensors",
        base=base_shape,
        max_rank=64,
    )
    assert spec.rank == RANK and spec.alpha == 8.0 and not spec.use_rslora
    assert spec.scaling == 2.0
    assert spec.target_modules == tuple(sorted(TARGET_MODULES))
    assert len(spec.pairs) == BASE_CONFIG["num_hidden_layers"] * len(TARGET_MODULES)
    tensors = load_file(str(peft_adapter.folder / "adapter_model.safetensors"))
    for pair in spec.pairs:
        in_features, out_features = base_shape.features(pair.module)
        assert tuple(tensors[pair.lora_a].shape) == (RANK, in_features)
        assert tuple(tensors[pair.lora_b].shape) == (out_features, RANK)
        assert f"layers.{pair.layer}." in pair.lora_a and pair.module in pair.lora_b
    assert set(spec.tensors) == set(tensors)


def test_base_shape_from_llama_config(base_shape):
    assert base_shape == BaseModelShape(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_hidden_layers=2,
    )
    assert base_shape.features("k_proj") == (32, 16)
    assert base_shape.features("o_proj") == (32, 32)
    assert base_shape.features("down_proj") == (64, 32)


def test_base_shape_defaults_and_errors():
    shape = BaseModelShape.from_config(
        {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_attention_heads": 8,
            "num_hidden_layers": 1,
        }
    )
    assert (shape.num_key_value_heads, shape.head_dim) == (8, 8)
    with pytest.raises(ValueError, match="hidden_size"):
        BaseModelShape.from_config({"num_attention_heads": 8})


def test_rslora_scaling_and_all_linear(peft_adapter, tmp_path, base_shape):
    config = json.loads(peft_adapter.config)
    config.update(use_rslora=True, lora_alpha=16, target_modules="all-linear")
    paths = _write_adapter(tmp_path, json.dumps(config).encode(), peft_adapter.weights)
    spec = validate_adapter_files(*paths, base=base_shape, max_rank=64)
    assert spec.use_rslora and math.isclose(spec.scaling, 16 / math.sqrt(RANK))


def test_regex_target_modules_are_checked_by_tensor_names(peft_adapter, tmp_path, base_shape):
    config = json.loads(peft_adapter.config)
    config["target_modules"] = r".*\.(q_proj|v_proj|k_proj|o_proj|gate_proj|up_proj|down_proj)"
    paths = _write_adapter(tmp_path, json.dumps(config).encode(), peft_adapter.weights)
    assert len(validate_adapter_files(*paths, base=base_shape, max_rank=64).pairs) == 14


def test_structure_only_validation_skips_base_shapes(peft_adapter):
    small = BaseModelShape(16, 32, 2, 2, 8, 1)
    folder = peft_adapter.folder
    args = (folder / "adapter_config.json", folder / "adapter_model.safetensors")
    with pytest.raises(AdapterFormatError, match="expected"):
        validate_adapter_files(*args, base=small, max_rank=None)
    assert validate_adapter_files(*args, base=None, max_rank=None).rank == RANK


def test_fp16_and_bf16_weights_are_accepted(peft_adapter, tmp_path, base_shape):
    from safetensors.torch import save

    tensors = load_file(str(peft_adapter.folder / "adapter_model.safetensors"))
    for dtype, name in ((torch.float16, "F16"), (torch.bfloat16, "BF16")):
        weights = save({key: t.to(dtype) for key, t in tensors.items()})
        paths = _write_adapter(tmp_path, peft_adapter.config, weights)
        spec = validate_adapter_files(*paths, base=base_shape, max_rank=64)
        assert {info.dtype for info in spec.tensors.values()} == {name}


def test_load_adapter_tensors_round_trips(peft_adapter):
    path = peft_adapter.folder / "adapter_model.safetensors"
    loaded = load_adapter_tensors(path)
    expected = load_file(str(path))
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[name], expected[name]) for name in expected)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"r": 0}, "positive integer"),
        ({"r": "4"}, "positive integer"),
        ({"lora_alpha": "8"}, "lora_alpha"),
        ({"lora_alpha": -1}, "lora_alpha"),
        ({"use_rslora": "yes"}, "use_rslora"),
        ({"target_modules": []}, "non-empty list"),
        ({"alpha_pattern": {"q_proj": 4}}, "per-module alphas"),
        ({"layer_replication": [[0, 1]]}, "layer replication"),
    ],
)
def test_config_rules(peft_adapter, changes, message):
    config = json.loads(peft_adapter.config)
    config.update(changes)
    with pytest.raises(AdapterFormatError, match=message):
        parse_lora_config(json.dumps(config).encode(), max_rank=64)


def test_config_size_is_bounded():
    with pytest.raises(AdapterFormatError, match="larger than"):
        parse_lora_config(b" " * (1024 * 1024 + 1), max_rank=64)
