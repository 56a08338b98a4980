"""Tensor layout against transformers, determinism, sharding and argument checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.core_model_loading import revert_weight_conversion

from loraplex.modelgen import PRESETS, make_model
from loraplex.modelgen.hf_config import model_config
from loraplex.modelgen.presets import resolve_spec
from loraplex.modelgen.weights import tensor_specs
from loraplex.modelgen.writer import DEFAULT_MAX_SHARD_BYTES, plan_shards

# GPT-2's 1/sqrt(2 * layers) on the residual branches (o_proj, down_proj) of the 2-layer preset.
DEPTH_SCALE_TINY = (2 * PRESETS["tiny"].num_hidden_layers) ** -0.5


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(path, framework="pt") as weights:
            tensors.update({name: weights.get_tensor(name) for name in set(weights.keys())})
    return tensors


PRESET_ARCHS = [(preset, arch) for preset in PRESETS for arch in PRESETS[preset].architectures]


@pytest.mark.parametrize(("preset", "arch"), PRESET_ARCHS)
def test_tensors_match_what_transformers_builds(tmp_path, preset, arch):
    spec = resolve_spec(preset, arch)
    (tmp_path / "config.json").write_text(json.dumps(model_config(spec)))
    config = AutoConfig.from_pretrained(tmp_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    # The layout save_pretrained writes: MoE experts one tensor each, not fused in memory.
    state = revert_weight_conversion(model, model.state_dict())
    expected = {name: tuple(p.shape) for name, p in state.items()}
    if spec.tie_word_embeddings:
        del expected["lm_head.weight"]
    assert {t.name: t.shape for t in tensor_specs(spec)} == expected


def test_llama3_8b_has_the_parameter_count_of_llama_3_8b():
    tensors = tensor_specs(resolve_spec("llama3-8b", "llama"))
    assert sum(t.numel for t in tensors) == 8_030_261_248


def test_mixtral_8x7b_has_the_parameter_count_of_mixtral_8x7b():
    spec = resolve_spec("mixtral-8x7b", "mixtral")
    assert spec.dtype == "bfloat16" and spec.experts_per_token == 2
    tensors = tensor_specs(spec)
    assert sum(t.numel for t in tensors) == 46_702_792_704
    shards = plan_shards(tensors, 2, DEFAULT_MAX_SHARD_BYTES)
    sizes = [sum(t.numel * 2 for t in shard) for shard in shards]
    assert len(shards) == 19 and max(sizes) <= DEFAULT_MAX_SHARD_BYTES


@pytest.mark.parametrize("arch", ["llama", "qwen2_moe"])
def test_mixtral_8x7b_is_mixtral_only(arch):
    with pytest.raises(ValueError, match="preset 'mixtral-8x7b' has no .* variant"):
        resolve_spec("mixtral-8x7b", arch)


def test_moe_experts_and_routers_scale_with_fan_in(tiny_models):
    weights = read_weights(tiny_models["qwen2_moe"])
    layer = "model.layers.1.mlp"
    moe = PRESETS["tiny"].moe
    assert weights[f"{layer}.gate.weight"].shape == (moe.num_experts, 128)
    assert weights[f"{layer}.gate.weight"].std() == pytest.approx(128**-0.5, rel=0.1)
    down = weights[f"{layer}.experts.7.down_proj.weight"]
    assert down.shape == (128, moe.expert_intermediate_size)
    depth = DEPTH_SCALE_TINY  # residual-branch outputs shrink with depth
    assert down.std() == pytest.approx(moe.expert_intermediate_size**-0.5 * depth, rel=0.1)
    shared = weights[f"{layer}.shared_expert.down_proj.weight"]
    assert shared.std() == pytest.approx(moe.shared_expert_intermediate_size**-0.5 * depth, rel=0.1)
    # Every expert is drawn from its own generator.
    assert not torch.equal(
        weights[f"{layer}.experts.0.up_proj.weight"], weights[f"{layer}.experts.1.up_proj.weight"]
    )


def test_llama3_8b_is_written_in_four_shards_of_at_most_5gb():
    spec = resolve_spec("llama3-8b", "llama")
    assert spec.dtype == "bfloat16"
    shards = plan_shards(tensor_specs(spec), 2, DEFAULT_MAX_SHARD_BYTES)
    sizes = [sum(t.numel * 2 for t in shard) for shard in shards]
    assert len(shards) == 4
    assert max(sizes) <= DEFAULT_MAX_SHARD_BYTES
    assert sum(sizes) == 8_030_261_248 * 2


def test_same_seed_gives_byte_identical_files(tiny_models, tmp_path):
    again = make_model("tiny", tmp_path / "again", arch="llama", seed=0)
    first = tiny_models["llama"]
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name


def test_another_seed_changes_every_weight_but_not_the_tokenizer(tiny_models, tmp_path):
    other = make_model("tiny", tmp_path / "other", arch="llama", seed=1)
    first = tiny_models["llama"]
    weights, other_weights = read_weights(first), read_weights(other)
    assert all(not torch.equal(weights[name], other_weights[name]) for name in weights)
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_sharded_model_has_an_index_and_the_same_tensors(tiny_models, tmp_path):
    sharded = make_model("tiny", tmp_path / "sharded", arch="qwen2", max_shard_bytes=400_000)
    files = sorted(p.name for p in sharded.glob("*.safetensors"))
    count = len(files)
    assert count > 2
    assert files == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    assert not (sharded / "model.safetensors").exists()
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    weights = read_weights(sharded)
    assert set(index["weight_map"]) == set(weights)
    assert set(index["weight_map"].values()) == set(files)
    for name, file_name in index["weight_map"].items():
        with safe_open(sharded / file_name, framework="pt") as shard:
            assert name in set(shard.keys())
    assert index["metadata"]["total_size"] == sum(t.nbytes for t in weights.values())
    # Per-tensor generators: the shard layout does not change any value.
    unsharded = read_weights(tiny_models["qwen2"])
    assert weights.keys() == unsharded.keys()
    assert all(torch.equal(weights[name], unsharded[name]) for name in weights)

    model, info = AutoModelForCausalLM.from_pretrained(sharded, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    reference = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"])
    ids = torch.tensor([[0, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_dtype_override_is_written_to_weights_and_config(tmp_path):
    folder = make_model("tiny", tmp_path / "bf16", arch="mistral", dtype="bfloat16")
    assert {t.dtype for t in read_weights(folder).values()} == {torch.bfloat16}
    config = json.loads((folder / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(folder).dtype == torch.bfloat16


def test_norm_weights_are_near_one_and_projections_scale_with_fan_in(tiny_models):
    weights = read_weights(tiny_models["llama"])
    norm = weights["model.layers.0.input_layernorm.weight"]
    assert 0.9 < norm.mean() < 1.1 and 0.05 < norm.std() < 0.2
    down = weights["model.layers.0.mlp.down_proj.weight"]
    assert down.std() == pytest.approx(256**-0.5 * DEPTH_SCALE_TINY, rel=0.05)
    up = weights["model.layers.0.mlp.up_proj.weight"]
    assert up.std() == pytest.approx(128**-0.5, rel=0.05)
    assert weights["model.embed_tokens.weight"].std() == pytest.approx(1.0, rel=0.05)


def test_overwrite_replaces_a_sharded_model_with_a_single_file(tmp_path):
    folder = make_model("tiny", tmp_path / "m", max_shard_bytes=400_000)
    (folder / "notes.txt").write_text("kept")
    with pytest.raises(ValueError, match="not empty"):
        make_model("tiny", folder)
    make_model("tiny", folder, overwrite=True)
    assert sorted(p.name for p in folder.glob("model*")) == ["model.safetensors"]
    assert (folder / "notes.txt").read_text() == "kept"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"arch": "gpt2"}, "unknown arch 'gpt2'"),
        ({"dtype": "int8"}, "unknown dtype 'int8'"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"seed": "7"}, "seed must be a non-negative integer"),
        ({"device": "tpu"}, "device"),
        ({"device": "not a device"}, "invalid device"),
        ({"max_shard_bytes": 0}, "max_shard_bytes must be positive"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, kwargs, message):
    arguments = {"preset": "tiny", "out_dir": tmp_path / "m", **kwargs}
    with pytest.raises(ValueError, match=message):
        make_model(**arguments)
    assert not (tmp_path / "m").exists()


def test_output_path_that_is_a_file_is_rejected(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        make_model("tiny", tmp_path / "file")
