"""Malformed requests and model folders raise a ValueError naming the problem, and the engine
keeps serving the other requests."""

import json
import shutil

import pytest

from loraplex import LLM, SamplingParams
from loraplex.engine.llm_engine import LLMEngine


@pytest.fixture(scope="module")
def llm(tiny_model_dirs, test_device):
    return LLM(tiny_model_dirs["llama"], dtype="float32", device=test_device, max_model_len=128)


def still_serves(llm: LLM) -> None:
    out = llm.generate("hello there", SamplingParams(temperature=0, max_tokens=4))
    assert len(out[0].outputs[0].token_ids) >= 1
    assert not llm.llm_engine.has_unfinished_requests()


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "empty"),
        ([], "empty"),
        ([5, 10**6], "outside the vocabulary"),
        ([-1, 5], "outside the vocabulary"),
        (["a", "b"], "list of ints"),
        (3.5, "string or a list"),
        ({"text": "hi"}, "'prompt'"),
    ],
)
def test_malformed_prompt(llm, prompt, message):
    engine: LLMEngine = llm.llm_engine
    with pytest.raises(ValueError, match=message):
        engine.add_request("bad", prompt, SamplingParams())
    assert not engine.has_unfinished_requests()
    still_serves(llm)


def test_prompt_longer_than_max_model_len_names_both_numbers(llm):
    with pytest.raises(ValueError, match=r"300 tokens.*max_model_len is 128"):
        llm.generate([[1] + [7] * 299], SamplingParams(max_tokens=4))
    still_serves(llm)


def test_bad_prompt_in_a_batch_aborts_the_whole_call(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.generate(["fine prompt", ""], SamplingParams(max_tokens=4))
    assert not llm.llm_engine.has_unfinished_requests()
    still_serves(llm)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n must"),
        ({"stop": 7}, "stop"),
        ({"stop": ["ok", 3]}, "stop"),
    ],
)
def test_bad_sampling_params(llm, kwargs, message):
    with pytest.raises(ValueError, match=message):
        llm.generate("hello", SamplingParams(**kwargs))
    still_serves(llm)


def test_duplicate_request_id(llm):
    engine = llm.llm_engine
    engine.add_request("dup", "hello", SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("dup", "hello", SamplingParams(max_tokens=2))
    while engine.has_unfinished_requests():
        engine.step()
    still_serves(llm)


def test_lora_request_without_enable_lora(llm):
    from loraplex import LoRARequest

    with pytest.raises(ValueError, match="enable_lora=False"):
        llm.generate("hello", SamplingParams(), lora_request=LoRARequest("a", 1, "/nowhere"))
    still_serves(llm)


def test_model_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="no config.json"):
        LLM(str(tmp_path), device="cpu")


def test_model_folder_without_weights(tiny_model_dirs, tmp_path):
    shutil.copy(f"{tiny_model_dirs['llama']}/config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights.*pytorch_model\.bin"):
        LLM(str(tmp_path), device="cpu")


def test_missing_model_folder(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        LLM(str(tmp_path / "absent"), device="cpu")


def test_unsupported_architecture_lists_supported(tiny_model_dirs, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["llama"], model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    config["model_type"] = "llama"
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"GPTNeoXForCausalLM.*LlamaForCausalLM"):
        LLM(str(model_dir), device="cpu")


def test_bad_engine_arguments(tiny_model_dirs):
    with pytest.raises(ValueError, match="dtype"):
        LLM(tiny_model_dirs["llama"], dtype="int3", device="cpu")
    with pytest.raises(ValueError, match="max_model_len"):
        LLM(tiny_model_dirs["llama"], max_model_len=10**6, device="cpu")
    with pytest.raises(ValueError, match="fewer than max_model_len"):
        LLM(tiny_model_dirs["llama"], max_model_len=512, num_gpu_blocks_override=2, device="cpu")
