from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from loraplex.engine.sampler import (
    Sampler,
    SamplingBatch,
    SamplingTensors,
    apply_penalties,
    make_generator,
    truncated_probs,
)
from loraplex.sampling_params import SamplingParams

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ],
    ),
]


def make_batch(
    params: list[SamplingParams],
    prompts: list[list[int] | np.ndarray] | None = None,
    outputs: list[list[int]] | None = None,
    generators: list[torch.Generator | None] | None = None,
) -> SamplingBatch:
    rows = len(params)
    return SamplingBatch(
        params=params,
        prompt_token_ids=prompts or [[] for _ in range(rows)],
        output_token_ids=outputs or [[] for _ in range(rows)],
        generators=generators or [None] * rows,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_greedy_takes_the_argmax(device: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 100, device=device)
    out = Sampler(100, {99})(logits, make_batch([SamplingParams(temperature=0)] * 8))
    assert out.token_ids == logits.argmax(dim=-1).tolist()


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_top_k_one_equals_greedy(top_p: float) -> None:
    torch.manual_seed(1)
    logits = torch.randn(16, 200)
    params = [SamplingParams(temperature=1.0, top_k=1, top_p=top_p)] * 16
    assert Sampler(200, set())(logits, make_batch(params)).token_ids == logits.argmax(-1).tolist()


def test_greedy_rows_in_a_random_batch_still_take_the_argmax() -> None:
    torch.manual_seed(2)
    logits = torch.randn(6, 50)
    params = [SamplingParams(temperature=0 if row % 2 else 1.5) for row in range(6)]
    tokens = Sampler(50, set())(logits, make_batch(params)).token_ids
    assert tokens[1::2] == logits[1::2].argmax(-1).tolist()


@pytest.mark.parametrize("other_top_p", [1.0, 0.999])
def test_truncation_applies_only_to_the_rows_that_ask_for_it(other_top_p: float) -> None:
    vocab, rows = 10, 600
    logits = torch.linspace(1.0, 0.0, vocab).expand(rows, vocab)
    params = [
        SamplingParams(top_k=2),
        SamplingParams(),
        SamplingParams(top_p=other_top_p),
    ] * (rows // 3)
    tokens = torch.tensor(Sampler(vocab, set())(logits, make_batch(params)).token_ids)
    assert set(tokens[0::3].tolist()) == {0, 1}
    assert set(tokens[1::3].tolist()) == set(range(vocab))
    assert set(tokens[2::3].tolist()) == set(range(vocab))


def test_rows_without_top_p_keep_their_tail_when_rounding_saturates_the_running_sum() -> None:
    # With one dominant token the float32 running sum reaches 1.0 before the tail tokens.
    logits = torch.tensor([[20.0] + [0.0] * 9] * 2)
    batch = make_batch([SamplingParams(top_p=0.5), SamplingParams()])
    tensors = SamplingTensors.from_batch(batch, 10, set(), torch.device("cpu"))
    probs = truncated_probs(logits, tensors)
    assert probs[0, 1:].eq(0).all()
    torch.testing.assert_close(probs[1], logits[1].softmax(-1), rtol=0, atol=0)


def test_all_greedy_step_without_penalties_builds_no_tensors() -> None:
    batch = make_batch([SamplingParams(temperature=0)] * 4, prompts=[[1, 2]] * 4)
    tensors = SamplingTensors.from_batch(batch, 10, {9}, torch.device("cpu"))
    assert tensors.all_greedy
    built = [name for name, value in vars(tensors).items() if isinstance(value, torch.Tensor)]
    assert built == []


def _sample_steps(
    sampler: Sampler,
    step_logits: list[torch.Tensor],
    params: SamplingParams,
    generator: torch.Generator,
) -> list[int]:
    tokens: list[int] = []
    for logits in step_logits:
        batch = make_batch([params], outputs=[list(tokens)], generators=[generator])
        tokens.append(sampler(logits[None], batch).token_ids[0])
    return tokens


@pytest.mark.parametrize("device", DEVICES)
def test_seeded_row_does_not_depend_on_batch_composition_or_position(device: str) -> None:
    vocab, steps = 64, 8
    sampler = Sampler(vocab, {0})
    torch.manual_seed(3)
    step_logits = [torch.randn(vocab, device=device) for _ in range(steps)]
    target = SamplingParams(temperature=0.9, top_p=0.95, seed=1234)
    alone = _sample_steps(sampler, step_logits, target, make_generator(1234, device))

    others = [
        SamplingParams(temperature=0),
        SamplingParams(top_k=3, seed=5),
        SamplingParams(temperature=1.5, min_p=0.1, repetition_penalty=1.3, min_tokens=4),
        SamplingParams(frequency_penalty=0.5, presence_penalty=0.5, top_p=0.5),
    ]
    other_generators = [None, make_generator(5, device), None, None]
    target_generator = make_generator(1234, device)
    shuffler = random.Random(0)
    batched: list[int] = []
    for logits in step_logits:
        order = list(range(5))
        shuffler.shuffle(order)  # order[i] is the batch position of row i; row 4 is the target
        rows = [*others, target]
        generators = [*other_generators, target_generator]
        outputs = [[1, 2, 3]] * 4 + [list(batched)]
        batch_logits = torch.randn(5, vocab, device=device)
        batch_logits[order[4]] = logits
        batch = make_batch(
            [rows[order.index(p)] for p in range(5)],
            prompts=[[4, 5]] * 5,
            outputs=[outputs[order.index(p)] for p in range(5)],
            generators=[generators[order.index(p)] for p in range(5)],
        )
        batched.append(sampler(batch_logits, batch).token_ids[order[4]])

    assert batched == alone
    other_seed = _sample_steps(sampler, step_logits, target, make_generator(99, device))
    assert other_seed != alone


def test_samples_of_one_request_differ_but_reproduce() -> None:
    vocab, steps = 64, 8
    sampler = Sampler(vocab, set())
    torch.manual_seed(4)
    step_logits = torch.randn(steps, vocab)
    request = SamplingParams(n=2, seed=77, temperature=1.0)

    def run() -> list[list[int]]:
        samples = [request.for_sample(i) for i in range(request.n)]
        generators = [make_generator(p.seed, "cpu") for p in samples]
        tokens: list[list[int]] = [[], []]
        for logits in step_logits:
            out = sampler(logits.expand(2, vocab), make_batch(samples, generators=generators))
            for row in range(2):
                tokens[row].append(out.token_ids[row])
        return tokens

    first, second = run(), run()
    assert first == second
    assert first[0] != first[1]


def test_penalties_match_a_hand_computed_example() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 0.0], [2.0, -1.0, 0.5, 3.0, -2.0, 0.0]])
    penalized = SamplingParams(
        temperature=0, repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25
    )
    batch = make_batch(
        [penalized, SamplingParams(temperature=0)],
        prompts=[np.array([0]), [0]],
        outputs=[[1, 3, 3], [1, 3, 3]],
    )
    tensors = SamplingTensors.from_batch(batch, 6, set(), torch.device("cpu"))
    result = apply_penalties(logits, tensors)
    # token 0: prompt, positive -> 2 / 2; token 1: output once, negative -> -1 * 2 - 0.5 - 0.25;
    # token 3: output twice, positive -> 3 / 2 - 2 * 0.5 - 0.25; unseen tokens unchanged.
    expected = torch.tensor([1.0, -2.75, 0.5, 0.25, -2.0, 0.0])
    torch.testing.assert_close(result[0], expected)
    torch.testing.assert_close(result[1], logits[1])
    assert logits[0, 0] == 2.0, "the caller's logits must not be modified"
    assert Sampler(6, set())(logits, batch).token_ids == [0, 3]


def test_min_tokens_blocks_eos_and_stop_tokens() -> None:
    vocab, eos, stop_id = 10, 9, 8
    logits = torch.zeros(1, vocab)
    logits[0, eos], logits[0, stop_id], logits[0, 4] = 10.0, 9.0, 1.0
    sampler = Sampler(vocab, {eos})
    params = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[stop_id])

    def greedy_after(output: list[int], row_params: SamplingParams = params) -> int:
        return sampler(logits, make_batch([row_params], outputs=[output])).token_ids[0]

    assert greedy_after([1, 2]) == 4
    assert greedy_after([1, 2, 3]) == eos
    ignoring = SamplingParams(
        temperature=0, min_tokens=3, stop_token_ids=[stop_id], ignore_eos=True
    )
    assert greedy_after([], ignoring) == eos

    random_rows = [SamplingParams(temperature=2.0, min_tokens=2, stop_token_ids=[stop_id])] * 500
    sampled = sampler(logits.expand(500, vocab), make_batch(random_rows)).token_ids
    assert eos not in sampled and stop_id not in sampled


def test_logprobs_are_raw_and_top_logprobs_are_the_true_top() -> None:
    torch.manual_seed(5)
    vocab = 50
    logits = torch.randn(4, vocab) * 3
    params = [
        SamplingParams(temperature=0.5, repetition_penalty=1.5, logprobs=5),
        SamplingParams(temperature=0, presence_penalty=1.0, logprobs=0),
        SamplingParams(top_k=10, logprobs=None),
        SamplingParams(temperature=0, frequency_penalty=2.0, logprobs=3),
    ]
    outputs = [[int(logits[row].argmax())] * 2 for row in range(4)]
    out = Sampler(vocab, set())(logits, make_batch(params, outputs=outputs))
    raw = torch.log_softmax(logits.double(), dim=-1)

    for row, token in enumerate(out.token_ids):
        assert out.logprobs[row] == pytest.approx(raw[row, token].item(), abs=1e-5)
    assert out.top_logprobs[1] == {out.token_ids[1]: out.logprobs[1]}
    assert out.top_logprobs[2] is None
    for row, count in ((0, 5), (3, 3)):
        entry = out.top_logprobs[row]
        assert next(iter(entry)) == out.token_ids[row]
        top_values, top_ids = raw[row].topk(count)
        assert set(entry) == set(top_ids.tolist()) | {out.token_ids[row]}
        for token, value in zip(top_ids.tolist(), top_values.tolist(), strict=True):
            assert entry[token] == pytest.approx(value, abs=1e-5)
    # The frequency penalty moved row 3 off the raw argmax; its logprob stays the raw one.
    assert out.token_ids[3] != outputs[3][0]


def reference_distribution(
    logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float
) -> np.ndarray:
    """softmax(logits / T), truncated by top-k, top-p and min-p in turn, each renormalised."""
    probs = np.exp(logits / temperature - np.max(logits / temperature))
    probs /= probs.sum()
    order = np.argsort(-probs)
    if top_k != -1:
        probs[order[top_k:]] = 0.0
        probs /= probs.sum()
    if top_p < 1.0:
        kept, mass = [], 0.0
        for token in order:
            if mass >= top_p:
                break
            kept.append(token)
            mass += probs[token]
        mask = np.zeros_like(probs, dtype=bool)
        mask[kept] = True
        probs[~mask] = 0.0
        probs /= probs.sum()
    if min_p > 0.0:
        probs[probs < min_p * probs.max()] = 0.0
        probs /= probs.sum()
    return probs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "min_p"),
    [
        (1.0, -1, 1.0, 0.0),
        (0.7, 4, 1.0, 0.0),
        (1.3, -1, 0.75, 0.0),
        (1.0, -1, 1.0, 0.15),
        (0.9, 6, 0.9, 0.1),
        (1.0, 1000, 1.0, 0.0),
    ],
)
def test_sampled_frequencies_match_the_truncated_softmax(
    device: str, temperature: float, top_k: int, top_p: float, min_p: float
) -> None:
    logits = [2.0, 1.5, 1.0, 0.7, 0.3, 0.0, -0.5, -1.0, -1.5, -3.0]
    vocab, draws = len(logits), 20_000
    expected = reference_distribution(np.array(logits), temperature, top_k, top_p, min_p)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)

    torch.manual_seed(6)
    batch_logits = torch.tensor(logits, device=device).expand(draws, vocab)
    tokens = Sampler(vocab, set())(batch_logits, make_batch([params] * draws)).token_ids
    observed = np.bincount(tokens, minlength=vocab)

    assert observed[expected == 0].sum() == 0, "a truncated token was sampled"
    kept = expected > 0
    expected_counts = expected[kept] * draws
    chi_square = float((((observed[kept] - expected_counts) ** 2) / expected_counts).sum())
    dof = int(kept.sum()) - 1
    # Chi-square has mean dof and variance 2*dof; six standard deviations is p < 1e-4.
    assert chi_square < dof + 6 * math.sqrt(2 * max(dof, 1))


def test_bad_input_raises_value_error() -> None:
    sampler = Sampler(10, {9})
    batch = make_batch([SamplingParams()] * 2)
    with pytest.raises(ValueError, match="shape"):
        sampler(torch.zeros(2, 11), batch)
    with pytest.raises(ValueError, match="shape"):
        sampler(torch.zeros(3, 10), batch)
    with pytest.raises(ValueError, match="floating point"):
        sampler(torch.zeros(2, 10, dtype=torch.int64), batch)
    with pytest.raises(ValueError, match="generators"):
        SamplingBatch([SamplingParams()], [[]], [[]], [])
    with pytest.raises(ValueError, match="vocab_size"):
        Sampler(0, set())
    with pytest.raises(ValueError, match="eos_token_ids"):
        Sampler(10, {-1})


def test_a_token_still_on_the_device_counts_for_penalties_and_min_tokens() -> None:
    """Async scheduling: a row's newest token may exist only in the previous step's sampled
    tensor; penalties see it in the row's output tokens and min_tokens counts it."""
    from loraplex.engine.sampling_batch import SamplingBatch

    vocab = 10
    params = [
        SamplingParams(temperature=0, frequency_penalty=1.0, min_tokens=3),
        SamplingParams(temperature=0, presence_penalty=1.0, min_tokens=3),
    ]
    batch = SamplingBatch(
        params=params,
        prompt_token_ids=[[1], [1]],
        output_token_ids=[[5, 6], [8]],
        generators=[None, None],
        pending_rows=[1, -1],
        pending_tokens=torch.tensor([4, 7]),
    )
    assert [batch.num_outputs(0), batch.num_outputs(1)] == [3, 1]
    tensors = SamplingTensors.from_batch(batch, vocab, {9}, torch.device("cpu"))
    assert tensors.output_tokens.tolist() == [[5, 6, 7], [8, vocab, vocab]]
    # Row 0 has its 3 tokens (one on the device): no ban; row 1 still bans EOS (9).
    assert tensors.banned_rows.tolist() == [1] and tensors.banned_tokens.tolist() == [9]
    logits = torch.zeros(2, vocab)
    logits[0, 7] = 0.5  # the pending token leads, until its frequency penalty applies
    logits[0, 3] = 0.4
    assert Sampler(vocab, {9})(logits, batch).token_ids[0] == 3


def test_pending_rows_need_their_tokens() -> None:
    from loraplex.engine.sampling_batch import SamplingBatch

    with pytest.raises(ValueError, match="no pending_tokens"):
        SamplingBatch([SamplingParams()], [[1]], [[2]], [None], pending_rows=[0])
