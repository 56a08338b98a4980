"""Random PEFT LoRA adapters for the tiny presets, made with peft itself."""

from __future__ import annotations

from pathlib import Path

import torch

# (rank, alpha, target modules, rsLoRA)
ADAPTER_SPECS = [
    (4, 8, ["q_proj", "v_proj"], False),
    (8, 16, ["q_proj", "k_proj", "v_proj", "o_proj"], False),
    (16, 8, ["gate_proj", "up_proj", "down_proj"], True),
    (8, 32, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], False),
    (4, 4, ["o_proj", "down_proj"], False),
    (16, 16, ["k_proj", "up_proj"], False),
    (8, 8, ["v_proj", "gate_proj"], True),
    (4, 16, ["q_proj", "down_proj"], False),
]


def make_peft_adapter(
    model_dir: str,
    out_dir: Path,
    rank: int,
    alpha: int,
    targets: list[str],
    rslora: bool,
    seed: int,
) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=targets,
        use_rslora=rslora,
        init_lora_weights=False,
        lora_dropout=0.0,
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir


def make_adapters(model_dir: str, root: Path, count: int) -> list[Path]:
    return [
        make_peft_adapter(model_dir, root / f"adapter{i}", *ADAPTER_SPECS[i], seed=100 + i)
        for i in range(count)
    ]


def peft_greedy(model_dir: str, adapter_dir: Path | None, prompts, max_tokens: int):
    """Greedy continuations by transformers (+ peft with the adapter active alone)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    results = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=max_tokens,
            )
        results.append(out[0, len(prompt) :].tolist())
    return results
