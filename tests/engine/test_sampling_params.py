from __future__ import annotations

import math

import pytest

from loraplex.sampling_params import SamplingParams, SamplingType


def test_defaults_match_vllm() -> None:
    params = SamplingParams()
    assert params.n == 1
    assert params.temperature == 1.0
    assert params.top_p == 1.0
    assert params.top_k == -1
    assert params.min_p == 0.0
    assert params.max_tokens == 16
    assert params.min_tokens == 0
    assert params.stop == []
    assert params.stop_token_ids == []
    assert params.logprobs is None
    assert params.skip_special_tokens is True
    assert params.include_stop_str_in_output is False
    assert params.sampling_type is SamplingType.RANDOM


def test_stop_is_normalized_to_a_list() -> None:
    assert SamplingParams(stop="###").stop == ["###"]
    assert SamplingParams(stop=("a", "bc")).stop == ["a", "bc"]
    assert SamplingParams(stop_token_ids=(3, 4)).stop_token_ids == [3, 4]
    assert SamplingParams(stop=["a", "bcd"]).max_stop_string_length == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"top_p": 1.0, "min_p": 1.0, "top_k": 1},
        {"presence_penalty": -2.0, "frequency_penalty": 2.0},
        {"logprobs": 0},
        {"logprobs": 20},
        {"max_tokens": None, "min_tokens": 500},
        {"max_tokens": 4, "min_tokens": 4},
        {"temperature": 0, "seed": -3},
        {"repetition_penalty": 0.5},
    ],
)
def test_boundary_values_are_accepted(kwargs: dict) -> None:
    params = SamplingParams(**kwargs)
    for name, value in kwargs.items():
        assert getattr(params, name) == value


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"min_p": -0.1}, "min_p"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"presence_penalty": -2.01}, "presence_penalty"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"frequency_penalty": math.inf}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        ({"n": 0}, "n must"),
        ({"n": "2"}, "n must"),
        ({"stop": 5}, "stop"),
        ({"stop": ["ok", 3]}, "stop"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"stop": {"a"}}, "stop"),
        ({"stop_token_ids": 5}, "stop_token_ids"),
        ({"stop_token_ids": [1, -1]}, "stop_token_ids"),
        ({"stop_token_ids": ["1"]}, "stop_token_ids"),
        ({"logprobs": -1}, "logprobs"),
        ({"logprobs": 21}, "logprobs"),
        ({"seed": "42"}, "seed"),
        ({"seed": 1.0}, "seed"),
        ({"seed": True}, "seed"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
        ({"skip_special_tokens": 1}, "skip_special_tokens"),
        ({"include_stop_str_in_output": None}, "include_stop_str_in_output"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_argument(kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        SamplingParams(**kwargs)


def test_messages_give_the_value_and_allowed_range() -> None:
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\], got 1.5"):
        SamplingParams(top_p=1.5)
    with pytest.raises(ValueError, match=r"logprobs must be an integer in \[0, 20\].*got 25"):
        SamplingParams(logprobs=25)


@pytest.mark.parametrize(
    ("temperature", "seed", "expected"),
    [
        (0.0, None, SamplingType.GREEDY),
        (1e-6, 7, SamplingType.GREEDY),
        (1e-5, None, SamplingType.RANDOM),
        (0.7, 7, SamplingType.RANDOM_SEED),
    ],
)
def test_sampling_type(temperature: float, seed: int | None, expected: SamplingType) -> None:
    params = SamplingParams(temperature=temperature, seed=seed)
    assert params.sampling_type is expected
    assert params.is_greedy == (expected is SamplingType.GREEDY)


def test_samples_of_a_seeded_request_get_consecutive_seeds() -> None:
    params = SamplingParams(n=3, seed=100, temperature=0.8)
    samples = [params.for_sample(i) for i in range(3)]
    assert [s.seed for s in samples] == [100, 101, 102]
    assert all(s.n == 1 and s.temperature == 0.8 for s in samples)
    assert SamplingParams(n=2).sample_seed(1) is None
    with pytest.raises(ValueError, match="sample index"):
        params.for_sample(3)
