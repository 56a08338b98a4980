"""Random weights that behave like a model: decisive logits, stable activations, varied text."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraplex.modelgen import ARCHITECTURES
from loraplex.modelgen.presets import MOE_ARCHITECTURES

PROMPTS = [
    "Hello, my name is",
    "The capital of France is",
    "def add(a, b):\n    return",
    "User: what is the best way to learn?\nAssistant:",
    "1 2 3 4 5 6 7 8",
    "Once upon a time there was a little girl who lived in a village near the forest.",
]
NEW_TOKENS = 16


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def model_and_tokenizer(request, tiny_models):
    folder = tiny_models[request.param]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def long_prompt_ids() -> torch.Tensor:
    """200 tokens, past the tiny Mistral window and the llama3 rope's original context."""
    generator = torch.Generator().manual_seed(1)
    return torch.cat([torch.tensor([0]), torch.randint(5, 2048, (199,), generator=generator)])


def forward_all(model, tokenizer):
    prompts = [tokenizer(p, return_tensors="pt").input_ids for p in PROMPTS]
    prompts.append(long_prompt_ids()[None])
    with torch.no_grad():
        return [model(ids, output_hidden_states=True) for ids in prompts]


def test_top1_top2_gap_is_far_above_rounding(model_and_tokenizer):
    outputs = forward_all(*model_and_tokenizer)
    logits = torch.cat([out.logits[0] for out in outputs])
    assert logits.shape[0] > 250
    top2 = logits.topk(2, dim=-1).values
    gaps = top2[:, 0] - top2[:, 1]
    assert (gaps > 1e-3).float().mean() >= 0.99
    assert gaps.median() > 0.1
    # "A few units": decisive, yet not so peaked that sampling becomes greedy.
    assert 2.0 < logits.std(dim=-1).mean() < 8.0


def test_hidden_states_stay_finite_and_scaled_through_all_layers(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    layer_outputs: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: layer_outputs.append(_first(out)))
        for layer in model.model.layers
    ]
    try:
        outputs = forward_all(model, tokenizer)
    finally:
        for hook in hooks:
            hook.remove()
    num_layers = model.config.num_hidden_layers
    assert len(layer_outputs) == num_layers * len(outputs)
    for i, out in enumerate(outputs):
        embeddings = out.hidden_states[0][0]
        stream = [embeddings] + [h[0] for h in layer_outputs[i * num_layers : (i + 1) * num_layers]]
        rms = torch.stack([h.pow(2).mean(dim=-1).sqrt() for h in stream])
        assert torch.isfinite(rms).all()
        assert rms.min() > 0.1 and rms.max() < 50.0
        # Past the embeddings (small by design when tied) each layer changes the stream by a
        # bounded factor: no blow-up, no collapse.
        growth = rms[2:] / rms[1:-1]
        assert (growth < 3.0).all() and (growth > 0.5).all()
        final = out.hidden_states[-1][0].pow(2).mean(dim=-1).sqrt()
        assert ((final > 0.5) & (final < 2.0)).all()


def _first(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def test_greedy_continuations_are_not_degenerate(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    continuations = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        continuations.append(out[0, ids.shape[1] :].tolist())
    assert all(len(set(tokens)) >= 4 for tokens in continuations)
    assert len({tokens[0] for tokens in continuations}) >= 4
    assert len({t for tokens in continuations for t in tokens}) >= 40


@pytest.mark.parametrize("arch", MOE_ARCHITECTURES)
def test_routers_spread_tokens_over_experts_with_clear_choices(tiny_models, arch):
    """Every expert serves tokens, and the last chosen expert beats the first unchosen one by
    far more than rounding, so the selection is decided by the weights."""
    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[arch])
    router_logits: list[torch.Tensor] = []
    hooks = [
        layer.mlp.gate.register_forward_hook(lambda _m, _i, out: router_logits.append(out[0]))
        for layer in model.model.layers
    ]
    try:
        forward_all(model, tokenizer)
    finally:
        for hook in hooks:
            hook.remove()
    top_k = model.config.num_experts_per_tok
    num_experts = len(model.model.layers[0].mlp.experts.gate_up_proj)
    logits = torch.cat(router_logits)
    assert logits.shape[0] > 500 and logits.shape[1] == num_experts
    ranked = logits.sort(dim=-1, descending=True).values
    margins = ranked[:, top_k - 1] - ranked[:, top_k]
    assert (margins > 1e-3).float().mean() >= 0.99
    chosen = logits.topk(top_k, dim=-1).indices.flatten()
    share = torch.bincount(chosen, minlength=num_experts).float() / chosen.numel()
    assert share.min() > 0.2 / num_experts and share.max() < 3.0 / num_experts
