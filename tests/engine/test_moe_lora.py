"""LoRA on mixture-of-experts models: adapters on the attention projections serve mixed batches
exactly as peft computes them; adapters that reach expert weights (routed experts, the shared
expert, the router, or the MLP of a sparse layer) are refused with a clear message."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loraplex import LLM, LoRARequest, SamplingParams
from loraplex.adapter_format.peft import (
    AdapterFormatError,
    BaseModelShape,
    validate_adapter_files,
)

from .peft_adapters import make_peft_adapter, peft_greedy

MOE_ARCHS = ["mixtral", "qwen2_moe"]
MAX_TOKENS = 16
EXPERT_REFUSAL = "expert weights are not supported yet"
# (rank, alpha, target modules, rsLoRA): attention projections only.
ATTENTION_ADAPTERS = [
    (8, 16, ["q_proj", "k_proj", "v_proj", "o_proj"], False),
    (4, 8, ["q_proj", "v_proj"], True),
]


def tiny(arch: str) -> str:
    from loraplex.modelgen import cached_model

    return str(cached_model("tiny", arch))


@pytest.fixture(scope="module", params=MOE_ARCHS)
def lora_case(request, tmp_path_factory):
    """(model dir, adapters, prompts, adapter index per prompt (-1: base), peft's tokens)."""
    model_dir = tiny(request.param)
    root = tmp_path_factory.mktemp(f"moe-adapters-{request.param}")
    adapters = [
        make_peft_adapter(model_dir, root / f"a{i}", *spec, seed=300 + i)
        for i, spec in enumerate(ATTENTION_ADAPTERS)
    ]
    rng = random.Random(11)
    prompts = [
        [0] + [rng.randrange(4, 2048) for _ in range(rng.randrange(2, 50))] for _ in range(12)
    ]
    choice = [(i % 3) - 1 for i in range(len(prompts))]
    expected: list[list[int] | None] = [None] * len(prompts)
    for index in (-1, 0, 1):
        rows = [i for i, c in enumerate(choice) if c == index]
        path = None if index < 0 else adapters[index]
        tokens = peft_greedy(model_dir, path, [prompts[r] for r in rows], MAX_TOKENS)
        for row, continuation in zip(rows, tokens, strict=True):
            expected[row] = continuation
    return model_dir, adapters, prompts, choice, expected


def make_llm(model_dir: str, device: str, tp: int = 1) -> LLM:
    return LLM(
        model_dir,
        dtype="float32",
        device=device,
        enable_lora=True,
        max_loras=2,
        max_lora_rank=8,
        max_model_len=256,
        tensor_parallel_size=tp,
    )


def test_attention_adapters_in_a_mixed_batch_match_peft(lora_case, test_device):
    model_dir, adapters, prompts, choice, expected = lora_case
    llm = make_llm(model_dir, test_device)
    loras = [None if c < 0 else LoRARequest(f"a{c}", c + 1, str(adapters[c])) for c in choice]
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS), loras)
    assert [o.outputs[0].token_ids for o in outputs] == expected
    # The adapters change the output: the base model's tokens differ for the same prompts.
    base = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS))
    assert [o.outputs[0].token_ids for o in base] != expected
    # Only attention projections are wrapped; the sparse MLPs are left alone.
    wrapped = {path for _, path in llm.llm_engine.model_runner.lora_layers}
    assert wrapped == {"self_attn.qkv_proj", "self_attn.o_proj"}


def test_attention_adapters_with_two_tensor_parallel_ranks(lora_case, test_device):
    if test_device.startswith("cuda") and torch.cuda.device_count() < 2:
        pytest.skip("tensor_parallel_size=2 on CUDA needs two GPUs")
    model_dir, adapters, prompts, choice, expected = lora_case
    llm = make_llm(model_dir, test_device, tp=2)
    try:
        loras = [None if c < 0 else LoRARequest(f"a{c}", c + 1, str(adapters[c])) for c in choice]
        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
        outputs = llm.generate(prompts, params, loras)
        assert [o.outputs[0].token_ids for o in outputs] == expected
    finally:
        llm.llm_engine.shutdown()


def _peft_adapter(model_dir: str, folder: Path, **options) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **options)
    get_peft_model(model, config).save_pretrained(str(folder), safe_serialization=True)
    return folder


def _handmade_adapter(folder: Path, target_modules, tensor_modules: list[str]) -> Path:
    """A PEFT-format adapter whose tensors sit on the given module paths of layer 0 (the names
    transformers 4 gave per-expert Linear modules, for instance)."""
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": target_modules}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    tensors = {}
    for module in tensor_modules:
        prefix = f"base_model.model.model.layers.0.{module}"
        tensors[f"{prefix}.lora_A.weight"] = torch.zeros(4, 128)
        tensors[f"{prefix}.lora_B.weight"] = torch.zeros(128, 4)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def expert_adapters(arch: str, root: Path) -> list[tuple[str, Path]]:
    """(what it targets, folder) of adapters that reach expert weights of `arch`'s tiny model."""
    model_dir = tiny(arch)
    if arch == "mixtral":
        return [
            (
                "fused expert parameters (peft target_parameters)",
                _peft_adapter(
                    model_dir,
                    root / "params",
                    target_modules=["q_proj"],
                    target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
                ),
            ),
            (
                "per-expert modules named in target_modules",
                _handmade_adapter(root / "w1", ["q_proj", "w1"], ["block_sparse_moe.experts.0.w1"]),
            ),
            (
                "per-expert modules matched by a regex",
                _handmade_adapter(root / "regex", ".*w1", ["block_sparse_moe.experts.3.w1"]),
            ),
            (
                "the router",
                _handmade_adapter(root / "router", ".*gate", ["block_sparse_moe.gate"]),
            ),
        ]
    return [
        (
            "the shared expert (gate_proj is only there in a sparse layer)",
            _peft_adapter(model_dir, root / "shared", target_modules=["gate_proj", "q_proj"]),
        ),
        (
            "a routed expert",
            _handmade_adapter(root / "expert", ".*up_proj", ["mlp.experts.2.up_proj"]),
        ),
        (
            "the MLP of a sparse layer",
            _handmade_adapter(root / "mlp", ["down_proj"], ["mlp.down_proj"]),
        ),
    ]


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_adapters_on_expert_weights_are_refused(arch, tmp_path, test_device):
    llm = make_llm(tiny(arch), test_device)
    greedy = SamplingParams(temperature=0, max_tokens=4)
    before = llm.generate([[0, 5, 6]], greedy)[0].outputs[0].token_ids
    for offset, (what, folder) in enumerate(expert_adapters(arch, tmp_path)):
        request = LoRARequest(folder.name, 40 + offset, str(folder))
        with pytest.raises(ValueError, match=EXPERT_REFUSAL) as refusal:
            llm.generate([[0, 5, 6]], greedy, lora_request=request)
        assert folder.name in str(refusal.value), what
        assert not llm.llm_engine.has_unfinished_requests(), what
    assert llm.generate([[0, 5, 6]], greedy)[0].outputs[0].token_ids == before


def test_mlp_adapters_fit_the_dense_layers_of_a_qwen2_moe(tmp_path):
    """mlp_only_layers keep a dense MLP, where gate/up/down stay ordinary LoRA targets."""
    config = json.loads((Path(tiny("qwen2_moe")) / "config.json").read_text())
    folder = _handmade_adapter(tmp_path / "dense", ["gate_proj"], ["mlp.gate_proj"])
    (folder / "adapter_model.safetensors").unlink()
    prefix = "base_model.model.model.layers.0.mlp.gate_proj"
    save_file(
        {
            f"{prefix}.lora_A.weight": torch.zeros(4, 128),
            f"{prefix}.lora_B.weight": torch.zeros(256, 4),
        },
        str(folder / "adapter_model.safetensors"),
    )
    files = (folder / "adapter_config.json", folder / "adapter_model.safetensors")
    sparse = BaseModelShape.from_config(config)
    assert sparse.moe_layers == frozenset({0, 1})
    with pytest.raises(
        AdapterFormatError, match=f"layer 0, a mixture of experts; {EXPERT_REFUSAL}"
    ):
        validate_adapter_files(*files, base=sparse, max_rank=None)
    dense_first = BaseModelShape.from_config({**config, "mlp_only_layers": [0]})
    assert dense_first.moe_layers == frozenset({1})
    spec = validate_adapter_files(*files, base=dense_first, max_rank=None)
    assert spec.target_modules == ("gate_proj",)


def test_moe_layers_follow_the_config():
    base = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": 6,
    }
    assert BaseModelShape.from_config(base).moe_layers == frozenset()
    mixtral = BaseModelShape.from_config({**base, "num_local_experts": 8})
    assert mixtral.moe_layers == frozenset(range(6))
    stepped = {**base, "num_experts": 4, "decoder_sparse_step": 2, "mlp_only_layers": [3]}
    assert BaseModelShape.from_config(stepped).moe_layers == frozenset({1, 5})
