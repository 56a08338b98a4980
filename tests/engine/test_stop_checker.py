from __future__ import annotations

import pytest

from loraplex.engine.stop_checker import StopDecision, check_stop, stop_string_holdback
from loraplex.sampling_params import SamplingParams

EOS = 2


def check(
    params: SamplingParams,
    text: str,
    new_chars: int,
    output_ids: list[int] | None = None,
    seq_len: int = 10,
    max_model_len: int = 100,
) -> StopDecision | None:
    return check_stop(
        output_token_ids=output_ids if output_ids is not None else [7],
        output_text=text,
        new_char_count=new_chars,
        params=params,
        eos_token_ids={EOS},
        seq_len=seq_len,
        max_model_len=max_model_len,
    )


def test_eos_stops_unless_ignored() -> None:
    assert check(SamplingParams(), "Hi", 0, [5, EOS]) == StopDecision("stop", None, None)
    assert check(SamplingParams(ignore_eos=True), "Hi", 0, [5, EOS]) is None


def test_visible_eos_and_stop_token_text_is_cut_unless_kept() -> None:
    shown = SamplingParams(skip_special_tokens=False, stop_token_ids=[9])
    assert check(shown, "Hi<eos>", 5, [5, EOS]) == StopDecision("stop", None, 2)
    assert check(shown, "Hi<s9>", 4, [5, 9]) == StopDecision("stop", 9, 2)
    kept = SamplingParams(skip_special_tokens=False, include_stop_str_in_output=True)
    assert check(kept, "Hi<eos>", 5, [5, EOS]) == StopDecision("stop", None, None)


def test_stop_token_id_stops_with_its_id_as_reason() -> None:
    decision = check(SamplingParams(stop_token_ids=[11, 12]), "abc", 0, [3, 12])
    assert decision == StopDecision("stop", 12, None)
    assert check(SamplingParams(stop_token_ids=[11]), "abc", 1, [3, 12]) is None


def test_stop_string_split_across_two_tokens_truncates_the_text() -> None:
    params = SamplingParams(stop="###")
    assert check(params, "Hello ##", 3, [1, 2, 3]) is None
    text = "Hello ### world"
    decision = check(params, text, 7, [1, 2, 3, 4])
    assert decision == StopDecision("stop", "###", 6)
    assert text[: decision.truncate_to] == "Hello "


def test_stop_string_kept_when_asked_and_text_after_it_removed() -> None:
    params = SamplingParams(stop="###", include_stop_str_in_output=True)
    text = "Hello ### world"
    decision = check(params, text, 7)
    assert decision == StopDecision("stop", "###", 9)
    assert text[: decision.truncate_to] == "Hello ###"
    assert check(params, "Hello ###", 2) == StopDecision("stop", "###", None)


def test_only_text_that_the_last_step_completed_is_searched() -> None:
    # "###" lies wholly in text that earlier steps already checked.
    assert check(SamplingParams(stop="###"), "### abc", 3) is None
    assert check(SamplingParams(stop="###"), "### abc", 5) == StopDecision("stop", "###", 0)
    assert check(SamplingParams(stop="###"), "###", 0) is None


def test_earliest_of_several_stop_strings_wins() -> None:
    decision = check(SamplingParams(stop=["world", "lo w"]), "Hello world", 11)
    assert decision == StopDecision("stop", "lo w", 3)


def test_nothing_stops_before_min_tokens() -> None:
    params = SamplingParams(min_tokens=3, stop=["x"], stop_token_ids=[9])
    assert check(params, "ab", 0, [1, EOS]) is None
    assert check(params, "ax", 1, [1, 4]) is None
    assert check(params, "ab", 0, [1, 9]) is None
    assert check(params, "abx", 1, [1, 4, 5]) == StopDecision("stop", "x", 2)


def test_max_tokens_and_context_length_end_with_length() -> None:
    assert check(SamplingParams(max_tokens=3), "abc", 1, [4, 5, 6]) == StopDecision("length", None)
    assert check(SamplingParams(max_tokens=3), "ab", 1, [4, 5]) is None
    unlimited = SamplingParams(max_tokens=None)
    assert check(unlimited, "abc", 1, [4, 5, 6], seq_len=99) is None
    assert check(unlimited, "abc", 1, [4, 5, 6], seq_len=100) == StopDecision("length", None)
    # The context is full: the sequence ends even before min_tokens.
    early = SamplingParams(min_tokens=10, max_tokens=20)
    assert check(early, "abc", 1, [4, 5, 6], seq_len=100) == StopDecision("length", None)


def test_a_stop_on_the_last_allowed_token_reports_stop() -> None:
    assert check(SamplingParams(max_tokens=2), "a", 0, [4, EOS]) == StopDecision("stop", None)


def test_new_char_count_is_validated() -> None:
    with pytest.raises(ValueError, match="new_char_count"):
        check(SamplingParams(), "abc", 4)
    with pytest.raises(ValueError, match="new_char_count"):
        check(SamplingParams(), "abc", -1)


@pytest.mark.parametrize(
    ("text", "stop", "held"),
    [
        ("Hello wor", ["world"], 3),
        ("Hello", ["world"], 0),
        ("ab#", ["##"], 1),
        ("a<|e", ["<|end|>", "e"], 3),
        ("xyz", [], 0),
        ("wo", ["world"], 2),
        ("ab", ["b"], 0),
    ],
)
def test_holdback_covers_a_possible_start_of_a_stop_string(
    text: str, stop: list[str], held: int
) -> None:
    assert stop_string_holdback(text, stop) == held
