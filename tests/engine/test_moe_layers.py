"""The MoE building blocks: routing as transformers routes, stacked experts loaded from the
per-expert layout, their tensor-parallel shards summing to the whole, and FP8 experts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loraplex.engine.distributed import tensor_parallel
from loraplex.engine.models.moe import (
    STACKED,
    MoEExperts,
    per_expert_checkpoint_entries,
    select_experts,
)
from loraplex.kernels.reference import FP8_DTYPE, fused_moe_ref

NUM_EXPERTS, HIDDEN, INTER = 6, 32, 24


def expert_tensors(seed: int = 0) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(gate [I, H], up [I, H], down [H, I]) of each expert, as a checkpoint holds them."""
    g = torch.Generator().manual_seed(seed)
    return {
        e: (
            torch.randn(INTER, HIDDEN, generator=g) / HIDDEN**0.5,
            torch.randn(INTER, HIDDEN, generator=g) / HIDDEN**0.5,
            torch.randn(HIDDEN, INTER, generator=g) / INTER**0.5,
        )
        for e in range(NUM_EXPERTS)
    }


def loaded_experts(tensors, rank: int = 0, size: int = 1) -> MoEExperts:
    with tensor_parallel(rank, size):
        experts = MoEExperts(NUM_EXPERTS, HIDDEN, INTER)
    entries = per_expert_checkpoint_entries("ckpt.experts", "mod", NUM_EXPERTS, ("g", "u", "d"))
    params = {"mod.gate_up_proj": experts.gate_up_proj, "mod.down_proj": experts.down_proj}
    for e, (gate, up, down) in tensors.items():
        for name, tensor in (("g", gate), ("u", up), ("d", down)):
            target, shard_id = entries[f"ckpt.experts.{e}.{name}"]
            module = params[target]
            module.weight.weight_loader(module.weight, tensor, shard_id)
    return experts


def routing(num_tokens: int = 17, top_k: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_tokens, HIDDEN, generator=g)
    logits = torch.randn(num_tokens, NUM_EXPERTS, generator=g)
    weights, ids = select_experts(logits, top_k, renormalize=True)
    return hidden, weights, ids


@pytest.mark.parametrize(
    ("arch", "normalize"), [("mixtral", True), ("qwen2_moe", True), ("qwen2_moe", False)]
)
def test_routing_matches_transformers_routers(arch, normalize):
    from transformers import MixtralConfig, Qwen2MoeConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeTopKRouter

    if arch == "mixtral":  # Mixtral always renormalises
        config = MixtralConfig(hidden_size=HIDDEN, num_local_experts=8, num_experts_per_tok=2)
        router = MixtralTopKRouter(config)
    else:
        config = Qwen2MoeConfig(
            hidden_size=HIDDEN, num_experts=8, num_experts_per_tok=3, norm_topk_prob=normalize
        )
        router = Qwen2MoeTopKRouter(config)
    g = torch.Generator().manual_seed(2)
    router.weight.data = torch.randn(8, HIDDEN, generator=g)
    hidden = torch.randn(40, HIDDEN, generator=g)
    _, hf_weights, hf_ids = router(hidden)
    weights, ids = select_experts(
        F.linear(hidden, router.weight), config.num_experts_per_tok, renormalize=normalize
    )
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    assert torch.equal(ids.long(), hf_ids)
    torch.testing.assert_close(weights, hf_weights.float(), rtol=1e-6, atol=1e-7)
    if normalize:
        torch.testing.assert_close(weights.sum(-1), torch.ones(40))
    else:
        assert (weights.sum(-1) < 1).all()


def test_stacked_experts_compute_each_experts_gated_mlp():
    tensors = expert_tensors()
    experts = loaded_experts(tensors)
    hidden, weights, ids = routing()
    expected = torch.zeros(hidden.shape)
    for t in range(hidden.shape[0]):
        for k in range(ids.shape[1]):
            gate, up, down = tensors[int(ids[t, k])]
            act = F.silu(gate @ hidden[t]) * (up @ hidden[t])
            expected[t] += weights[t, k] * (down @ act)
    torch.testing.assert_close(experts(hidden, weights, ids), expected, rtol=1e-5, atol=1e-5)


def test_tensor_parallel_shards_sum_to_the_whole():
    """Each rank keeps half of every expert's intermediate dimension; without a process group
    the all-reduce is the identity, so each rank's output is its partial sum."""
    tensors = expert_tensors(3)
    hidden, weights, ids = routing(seed=4)
    whole = loaded_experts(tensors)(hidden, weights, ids)
    shards = [loaded_experts(tensors, rank, 2) for rank in range(2)]
    assert shards[0].gate_up_proj.weight.shape == (NUM_EXPERTS, INTER, HIDDEN)
    assert shards[1].down_proj.weight.shape == (NUM_EXPERTS, HIDDEN, INTER // 2)
    # Rank 1 holds the second half of expert 2's gate rows, then of its up rows.
    gate, up, down = tensors[2]
    half = INTER // 2
    torch.testing.assert_close(
        shards[1].gate_up_proj.weight[2], torch.cat([gate[half:], up[half:]])
    )
    torch.testing.assert_close(shards[1].down_proj.weight[2], down[:, half:])
    partials = sum(shard(hidden, weights, ids) for shard in shards)
    torch.testing.assert_close(partials, whole, rtol=1e-5, atol=1e-5)


def test_fp8_experts_keep_one_scale_per_output_channel():
    tensors = expert_tensors(5)
    experts = loaded_experts(tensors)
    hidden, weights, ids = routing(seed=6)
    full = experts(hidden, weights, ids)
    experts.quantize_fp8_()
    experts.quantize_fp8_()  # a second call keeps the first quantization
    assert experts.gate_up_proj.weight.dtype == FP8_DTYPE
    assert experts.gate_up_proj.weight_scale.shape == (NUM_EXPERTS, 2 * INTER)
    assert experts.down_proj.weight_scale.shape == (NUM_EXPERTS, HIDDEN)
    out = experts(hidden, weights, ids)
    w13 = experts.gate_up_proj.weight.float() * experts.gate_up_proj.weight_scale[..., None]
    w2 = experts.down_proj.weight.float() * experts.down_proj.weight_scale[..., None]
    torch.testing.assert_close(out, fused_moe_ref(hidden, w13, w2, weights, ids))
    assert ((out - full).norm() / full.norm()) < 0.05


def test_expert_tensors_of_the_wrong_shape_are_refused():
    experts = MoEExperts(NUM_EXPERTS, HIDDEN, INTER)
    weight = experts.gate_up_proj.weight
    with pytest.raises(ValueError, match=r"expert tensor of shape \(25, 32\) does not fit"):
        weight.weight_loader(weight, torch.zeros(INTER + 1, HIDDEN), (0, 0))


def test_stacked_expert_tensors_of_the_wrong_shape_are_refused():
    experts = MoEExperts(NUM_EXPERTS, HIDDEN, INTER)
    weight = experts.down_proj.weight
    with pytest.raises(ValueError, match=r"stacked expert tensor \(6, 32, 25\) does not fit"):
        weight.weight_loader(weight, torch.zeros(NUM_EXPERTS, HIDDEN, INTER + 1), STACKED)


def test_stacked_layout_loads_like_per_expert_tensors():
    """gate rows then up rows per expert, split per slice under tensor parallelism."""
    generator = torch.Generator().manual_seed(3)
    gate_up = torch.randn(NUM_EXPERTS, 2 * INTER, HIDDEN, generator=generator)
    down = torch.randn(NUM_EXPERTS, HIDDEN, INTER, generator=generator)
    for rank in range(2):
        with tensor_parallel(rank, 2):
            stacked, per_expert = (
                MoEExperts(NUM_EXPERTS, HIDDEN, INTER),
                MoEExperts(NUM_EXPERTS, HIDDEN, INTER),
            )
        for module, name, full in (("gate_up_proj", 0, gate_up), ("down_proj", 0, down)):
            weight = getattr(stacked, module).weight
            weight.weight_loader(weight, full, STACKED)
            other = getattr(per_expert, module).weight
            for expert in range(NUM_EXPERTS):
                if module == "gate_up_proj":
                    other.weight_loader(other, full[expert, :INTER], (expert, 0))
                    other.weight_loader(other, full[expert, INTER:], (expert, 1))
                else:
                    other.weight_loader(other, full[expert], (expert, name))
            assert torch.equal(weight, other)


def test_an_intermediate_size_that_does_not_split_is_refused():
    with tensor_parallel(0, 4), pytest.raises(ValueError, match="does not split"):
        MoEExperts(NUM_EXPERTS, HIDDEN, 30)
