"""Adapter management on the engine (vLLM's add/remove/list/pin) and bad adapters: each is a
ValueError naming the problem, and the engine serves a good request afterwards."""

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import save_file

from loraplex import LLM, LoRARequest, SamplingParams

from .peft_adapters import make_adapters

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def adapters(tiny_model_dirs, tmp_path_factory):
    return make_adapters(tiny_model_dirs["llama"], tmp_path_factory.mktemp("lora"), 4)


@pytest.fixture(scope="module")
def llm(tiny_model_dirs, test_device):
    return LLM(
        tiny_model_dirs["llama"],
        dtype="float32",
        device=test_device,
        enable_lora=True,
        max_loras=2,
        max_cpu_loras=3,
        max_lora_rank=16,
        max_model_len=128,
    )


def serves(llm, adapter_path=None):
    lora = None
    if adapter_path is not None:
        lora = LoRARequest(adapter_path.name, 900 + int(adapter_path.name[-1]), str(adapter_path))
    out = llm.generate("hello there", GREEDY, lora_request=lora)
    assert len(out[0].outputs[0].token_ids) == 6
    assert not llm.llm_engine.has_unfinished_requests()


def broken_copy(src, dst, *, config=None, weights=None):
    shutil.copytree(src, dst)
    if config is not None:
        (dst / "adapter_config.json").write_text(config)
    if weights is not None:
        save_file(weights, str(dst / "adapter_model.safetensors"))
    return dst


def edit_config(src, **changes):
    config = json.loads((src / "adapter_config.json").read_text())
    config.update(changes)
    return json.dumps(config)


def test_add_list_pin_remove(llm, adapters):
    engine = llm.llm_engine
    first = LoRARequest("a0", 1, str(adapters[0]))
    assert engine.add_lora(first) is True
    assert engine.add_lora(first) is False
    assert 1 in engine.list_loras()
    assert engine.pin_lora(1) is True
    assert engine.pin_lora(12345) is False
    # Two more adapters through one free slot: the pinned one must never leave its slot.
    for index in (1, 3):
        request = LoRARequest(f"a{index}", index + 1, str(adapters[index]))
        llm.generate(["one", "two"], GREEDY, lora_request=request)
    held = {a.lora_int_id for _, a, pinned, _ in engine.lora_manager.slot_table() if pinned}
    assert held == {1}
    assert engine.remove_lora(1) is True
    assert 1 not in engine.list_loras()
    assert engine.remove_lora(1) is False


def test_removing_a_running_adapter_does_not_change_its_requests(llm, adapters):
    engine = llm.llm_engine
    request = LoRARequest("a2", 3, str(adapters[2]))
    expected = llm.generate("steady output", GREEDY, lora_request=request)[0].outputs[0].token_ids
    engine.add_request("keep", "steady output", GREEDY, lora_request=request)
    engine.step()  # prefill with the adapter in a slot
    assert engine.remove_lora(3) is True
    outputs = []
    while engine.has_unfinished_requests():
        outputs += engine.step()
    assert outputs[-1].outputs[0].token_ids == expected


def test_same_id_with_another_path_is_refused(llm, adapters):
    llm.generate("x", GREEDY, lora_request=LoRARequest("a0", 50, str(adapters[0])))
    with pytest.raises(ValueError, match="lora_int_id 50 is already used"):
        llm.generate("x", GREEDY, lora_request=LoRARequest("a1", 50, str(adapters[1])))
    serves(llm, adapters[0])


def test_lora_requested_while_disabled(tiny_model_dirs, adapters, test_device):
    plain = LLM(tiny_model_dirs["llama"], dtype="float32", device=test_device, max_model_len=64)
    with pytest.raises(ValueError, match="enable_lora=False"):
        plain.generate("x", GREEDY, lora_request=LoRARequest("a0", 1, str(adapters[0])))
    with pytest.raises(ValueError, match="enable_lora=False"):
        plain.llm_engine.add_lora(LoRARequest("a0", 1, str(adapters[0])))
    serves(plain)


def bad_cases(src, tmp):
    """(name, adapter folder, expected message) for each malformed adapter."""
    tensors = {}
    from safetensors import safe_open

    with safe_open(str(src / "adapter_model.safetensors"), "pt") as f:
        for key in f.keys():  # noqa: SIM118
            tensors[key] = f.get_tensor(key)
    wrong_shape = dict(tensors)
    key = next(k for k in tensors if "lora_A" in k)
    wrong_shape[key] = torch.zeros(tensors[key].shape[0], 77)
    pickled = tmp / "pickled"
    pickled.mkdir()
    shutil.copy(src / "adapter_config.json", pickled / "adapter_config.json")
    (pickled / "adapter_model.bin").write_bytes(pickle.dumps({"weights": 1}))
    no_config = tmp / "no_config"
    no_config.mkdir()
    shutil.copy(src / "adapter_model.safetensors", no_config / "adapter_model.safetensors")
    return [
        ("missing folder", tmp / "absent", "is not a folder"),
        ("missing config", no_config, "no adapter_config.json"),
        ("config not JSON", broken_copy(src, tmp / "notjson", config="{nope"), "not valid JSON"),
        ("pickle weights", pickled, "pickle"),
        ("rank too big", broken_copy(src, tmp / "rank", config=edit_config(src, r=64)), "rank"),
        (
            "embed target",
            broken_copy(
                src, tmp / "embed", config=edit_config(src, target_modules=["embed_tokens"])
            ),
            "embed_tokens",
        ),
        (
            "lm_head target",
            broken_copy(src, tmp / "head", config=edit_config(src, target_modules=["lm_head"])),
            "lm_head",
        ),
        (
            "modules_to_save",
            broken_copy(src, tmp / "mts", config=edit_config(src, modules_to_save=["lm_head"])),
            "modules_to_save",
        ),
        ("dora", broken_copy(src, tmp / "dora", config=edit_config(src, use_dora=True)), "DoRA"),
        ("bias", broken_copy(src, tmp / "bias", config=edit_config(src, bias="all")), "bias"),
        ("shape", broken_copy(src, tmp / "shape", weights=wrong_shape), "shape"),
    ]


def test_each_bad_adapter_is_refused_and_engine_keeps_serving(llm, adapters, tmp_path):
    cases = bad_cases(adapters[0], tmp_path)
    for offset, (name, folder, message) in enumerate(cases):
        request = LoRARequest(name, 500 + offset, str(folder))
        with pytest.raises(ValueError, match=message):
            llm.generate("hello", GREEDY, lora_request=request)
        assert not llm.llm_engine.has_unfinished_requests(), name
    serves(llm, adapters[1])
    serves(llm)


def test_adapter_trained_on_another_base_is_refused(llm, tmp_path):
    """A mismatched base model shows in the shapes: here a narrower hidden size."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=2048,
        )
    )
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False)
    get_peft_model(other, config).save_pretrained(str(tmp_path / "other"), safe_serialization=True)
    with pytest.raises(ValueError, match="hidden_size=128"):
        llm.generate("x", GREEDY, lora_request=LoRARequest("other", 77, str(tmp_path / "other")))
    serves(llm)


def test_loaded_adapter_lives_in_one_buffer(llm, adapters):
    """One host buffer per adapter: a slot load is then a single transfer to the GPU."""
    adapter = llm.llm_engine.lora_manager.get(LoRARequest("a3", 4, str(adapters[3])))
    tensors = [t for stack in adapter.weights for t in (stack.a, stack.b)]
    storages = {t.untyped_storage().data_ptr() for t in tensors}
    assert len(tensors) == 2 * 7 and len(storages) == 1
    assert all(stack.layers == (0, 1) for stack in adapter.weights)
    assert sum(t.nbytes for t in tensors) == tensors[0].untyped_storage().nbytes()
