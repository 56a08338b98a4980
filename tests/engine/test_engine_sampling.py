"""Sampling through the whole engine: seeds, stop conditions, n, logprobs, and a statistical
check of sampled frequencies against transformers' next-token distribution."""

import pytest
import torch
from scipy import stats

from loraplex import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_model_dirs, test_device):
    return LLM(tiny_model_dirs["llama"], dtype="float32", device=test_device, max_model_len=256)


PROMPTS = ["The cat sat on", "Numbers: 1 2 3", "def main():", "Hello, world"]


def token_ids(outputs):
    return [[c.token_ids for c in o.outputs] for o in outputs]


def test_fixed_seed_reproduces_and_seeds_differ(llm):
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=16, ignore_eos=True)
    first = token_ids(llm.generate(PROMPTS, params))
    second = token_ids(llm.generate(PROMPTS, params))
    other = token_ids(llm.generate(PROMPTS, SamplingParams(temperature=1.0, seed=8, max_tokens=16)))
    assert first == second
    assert first != other


def test_seeded_request_does_not_depend_on_its_batch(llm):
    seeded = SamplingParams(temperature=1.0, seed=11, max_tokens=12, ignore_eos=True)
    alone = llm.generate(PROMPTS[0], seeded)[0].outputs[0].token_ids
    crowd = [SamplingParams(temperature=1.3, max_tokens=20, ignore_eos=True)] * 3
    outputs = llm.generate(PROMPTS[1:] + PROMPTS[:1], [*crowd, seeded])
    assert outputs[-1].outputs[0].token_ids == alone


def test_top_k_one_equals_greedy(llm):
    greedy = token_ids(llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16)))
    top1 = token_ids(llm.generate(PROMPTS, SamplingParams(temperature=0.9, top_k=1, max_tokens=16)))
    assert top1 == greedy


def test_n_samples_differ_and_reproduce(llm):
    params = SamplingParams(n=3, temperature=1.0, seed=3, max_tokens=10, ignore_eos=True)
    first = llm.generate(PROMPTS[0], params)[0]
    again = llm.generate(PROMPTS[0], params)[0]
    assert [c.index for c in first.outputs] == [0, 1, 2]
    assert token_ids([first]) == token_ids([again])
    assert len({tuple(c.token_ids) for c in first.outputs}) > 1


def test_stop_string_ends_output_and_is_not_included(llm):
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    full = llm.generate(PROMPTS[2], params)[0].outputs[0].text
    stop = full[10:13]
    assert len(stop) == 3
    cut = llm.generate(PROMPTS[2], SamplingParams(temperature=0, max_tokens=40, stop=[stop]))
    completion = cut[0].outputs[0]
    assert completion.finish_reason == "stop"
    assert completion.stop_reason == stop
    assert completion.text == full[: full.index(stop)]


def test_stop_token_id_ends_output(llm):
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    full = llm.generate(PROMPTS[1], params)[0].outputs[0].token_ids
    stop_token = full[6]
    first = full.index(stop_token)
    out = llm.generate(
        PROMPTS[1], SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[stop_token])
    )
    completion = out[0].outputs[0]
    assert completion.token_ids == full[: first + 1]
    assert completion.finish_reason == "stop"
    assert completion.stop_reason == stop_token


def test_max_tokens_and_min_tokens(llm):
    eos = llm.get_tokenizer().eos_token_id
    out = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=7, ignore_eos=True))
    assert all(len(o.outputs[0].token_ids) == 7 for o in out)
    assert all(o.outputs[0].finish_reason == "length" for o in out)
    # min_tokens forbids EOS before 5 tokens even where the model would emit it.
    banned = SamplingParams(temperature=0, max_tokens=8, min_tokens=5, stop_token_ids=[eos])
    for o in llm.generate(PROMPTS, banned):
        assert eos not in o.outputs[0].token_ids[:5]


def test_logprobs_are_top_k_and_sum_to_cumulative(llm):
    out = llm.generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=6, logprobs=3))
    completion = out[0].outputs[0]
    assert len(completion.logprobs) == len(completion.token_ids)
    total = 0.0
    for token, top in zip(completion.token_ids, completion.logprobs, strict=False):
        assert token in top
        assert len(top) >= 3
        assert top[token] == max(top.values())  # greedy picks the most likely
        total += top[token]
    assert completion.cumulative_logprob == pytest.approx(total, abs=1e-4)


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.8},
        {"temperature": 1.0, "top_k": 12},
        {"temperature": 1.2, "top_p": 0.8},
        {"temperature": 1.0, "min_p": 0.05},
    ],
)
def test_sampled_frequencies_match_reference_distribution(llm, tiny_model_dirs, params):
    from transformers import AutoModelForCausalLM

    prompt = llm.get_tokenizer()(PROMPTS[3]).input_ids
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"], dtype=torch.float32)
    with torch.no_grad():
        logits = hf(torch.tensor([prompt])).logits[0, -1].double()
    probs = expected_distribution(logits, **params)

    samples = 3000
    out = llm.generate(
        [prompt], SamplingParams(n=samples, max_tokens=1, seed=2024, ignore_eos=True, **params)
    )
    counts = torch.bincount(
        torch.tensor([c.token_ids[0] for c in out[0].outputs]), minlength=len(probs)
    ).double()
    assert counts[probs == 0].sum() == 0, "sampled a token the truncation removes"
    # Pool the rare tokens so every chi-square cell expects at least 5 samples.
    expected = probs * samples
    big = expected >= 5
    observed_cells = torch.cat([counts[big], counts[~big].sum().view(1)])
    expected_cells = torch.cat([expected[big], expected[~big].sum().view(1)])
    if expected_cells[-1] < 5:
        observed_cells[-2] += observed_cells[-1]
        expected_cells[-2] += expected_cells[-1]
        observed_cells, expected_cells = observed_cells[:-1], expected_cells[:-1]
    p_value = stats.chisquare(observed_cells.numpy(), expected_cells.numpy()).pvalue
    assert p_value > 1e-3


def expected_distribution(logits, temperature, top_k=-1, top_p=1.0, min_p=0.0):
    probs = torch.softmax(logits / temperature, dim=-1)
    keep = torch.ones_like(probs, dtype=torch.bool)
    if top_k > 0:
        keep &= probs >= probs.topk(top_k).values[-1]
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        mass_before = sorted_probs.cumsum(0) - sorted_probs
        keep_sorted = mass_before < top_p
        keep &= torch.zeros_like(keep).scatter(0, order, keep_sorted)
    if min_p > 0:
        keep &= probs >= min_p * probs.max()
    probs = torch.where(keep, probs, 0.0)
    return probs / probs.sum()
