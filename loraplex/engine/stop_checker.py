"""Whether a sequence finishes after its newest token, and how its text ends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from loraplex.sampling_params import SamplingParams


@dataclass(frozen=True)
class StopDecision:
    """Why a sequence finished and what is left of its output text."""

    finish_reason: Literal["stop", "length"]
    # The matched stop string, the stop token id, or None for EOS and length.
    stop_reason: str | int | None
    # Keep output_text[:truncate_to]; None keeps it whole.
    truncate_to: int | None = None


def _find_stop_string(
    output_text: str, new_char_count: int, params: SamplingParams
) -> tuple[str, int] | None:
    """The earliest stop string that the last step's text completed, and where it starts."""
    best: tuple[str, int] | None = None
    for stop in params.stop:
        # Only a match ending in the new characters is new: earlier text was already checked.
        start = max(0, len(output_text) - new_char_count - len(stop) + 1)
        index = output_text.find(stop, start)
        if index != -1 and (best is None or index < best[1]):
            best = (stop, index)
    return best


def check_stop(
    *,
    output_token_ids: Sequence[int],
    output_text: str,
    new_char_count: int,
    params: SamplingParams,
    eos_token_ids: set[int],
    seq_len: int,
    max_model_len: int,
) -> StopDecision | None:
    """Decide whether the sequence ends after its last token; None if it goes on.

    `output_text` is the text so far including the last step's `new_char_count` characters;
    `seq_len` counts prompt and output tokens. EOS, stop token ids and stop strings end it with
    "stop" once `min_tokens` tokens exist; `max_tokens` or the context length with "length".
    The text of a stop token or EOS, and a stop string with everything after it, are cut off
    unless `include_stop_str_in_output`.
    """
    if new_char_count < 0 or new_char_count > len(output_text):
        raise ValueError(f"new_char_count must be in [0, {len(output_text)}], got {new_char_count}")
    num_output = len(output_token_ids)
    if num_output >= params.min_tokens and num_output > 0:
        decision = _check_stop_conditions(
            output_token_ids[-1], output_text, new_char_count, params, eos_token_ids
        )
        if decision is not None:
            return decision
    if params.max_tokens is not None and num_output >= params.max_tokens:
        return StopDecision("length", None)
    if seq_len >= max_model_len:
        return StopDecision("length", None)
    return None


def _check_stop_conditions(
    last_token: int,
    output_text: str,
    new_char_count: int,
    params: SamplingParams,
    eos_token_ids: set[int],
) -> StopDecision | None:
    keep_stop_text = params.include_stop_str_in_output
    # The last step's characters are the stop token's own text (visible only when special
    # tokens are not skipped).
    token_text_cut = (
        None if keep_stop_text or new_char_count == 0 else (len(output_text) - new_char_count)
    )
    if last_token in eos_token_ids and not params.ignore_eos:
        return StopDecision("stop", None, token_text_cut)
    if last_token in params.stop_token_ids:
        return StopDecision("stop", last_token, token_text_cut)
    if new_char_count == 0 or not params.stop:
        return None
    match = _find_stop_string(output_text, new_char_count, params)
    if match is None:
        return None
    stop, index = match
    end = index + len(stop) if keep_stop_text else index
    return StopDecision("stop", stop, end if end < len(output_text) else None)


def stop_string_holdback(output_text: str, stop: Sequence[str]) -> int:
    """How many trailing characters to hold back from streaming: the longest end of the text
    that is the beginning of a stop string, which the next tokens may complete."""
    longest = 0
    for stop_string in stop:
        for length in range(min(len(stop_string) - 1, len(output_text)), longest, -1):
            if output_text.endswith(stop_string[:length]):
                longest = length
                break
    return longest
