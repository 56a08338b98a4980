"""Per-request sampling options, with vLLM's names and defaults."""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass

# Below this temperature a request is decoded greedily: dividing logits by ~0 would overflow.
GREEDY_TEMPERATURE = 1e-5
# Upper bound on top logprobs per generated token, as the OpenAI API allows.
MAX_LOGPROBS = 20


class RequestOutputKind(enum.Enum):
    """What each `RequestOutput` of a request carries (vLLM's names)."""

    CUMULATIVE = 0  # everything generated so far, every step
    DELTA = 1  # only what is new since the request's previous output
    FINAL_ONLY = 2  # nothing until the request finishes, then everything


class SamplingType(enum.IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


def _is_int(value: object) -> bool:
    # bool is an int subclass, but `max_tokens=True` is a caller's mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass
class SamplingParams:
    """How to sample the completion of one prompt; validated on construction.

    `n > 1` is served as n independent samples; `for_sample(i)` gives the parameters of sample i.
    After construction `stop` and `stop_token_ids` are always lists (possibly empty).
    """

    n: int = 1  # completions to return for the prompt
    temperature: float = 1.0  # 0 (or below 1e-5) decodes greedily
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose mass reaches top_p
    top_k: int = -1  # keep the k most likely tokens; -1 keeps all
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one
    repetition_penalty: float = 1.0  # > 1 discourages tokens seen in the prompt or output
    presence_penalty: float = 0.0  # subtracted once from tokens already in the output
    frequency_penalty: float = 0.0  # subtracted per occurrence in the output
    seed: int | None = None  # makes the request's samples reproducible
    max_tokens: int | None = 16  # None: up to the model's context length
    min_tokens: int = 0  # EOS and stop tokens are blocked until this many tokens exist
    stop: str | list[str] | None = None  # strings that end the completion
    stop_token_ids: list[int] | None = None  # token ids that end the completion
    ignore_eos: bool = False  # keep generating past the EOS token
    logprobs: int | None = None  # top logprobs per generated token; 0: only the sampled one's
    skip_special_tokens: bool = True  # leave special tokens out of the output text
    include_stop_str_in_output: bool = False  # keep the matched stop string in the text
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE

    def __post_init__(self) -> None:
        self._validate_numbers()
        self.stop = self._normalized_stop(self.stop)
        self.stop_token_ids = self._normalized_stop_token_ids(self.stop_token_ids)
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        if not isinstance(self.skip_special_tokens, bool):
            raise ValueError(
                f"skip_special_tokens must be a bool, got {self.skip_special_tokens!r}"
            )
        if not isinstance(self.include_stop_str_in_output, bool):
            raise ValueError(
                "include_stop_str_in_output must be a bool, "
                f"got {self.include_stop_str_in_output!r}"
            )
        if not isinstance(self.output_kind, RequestOutputKind):
            raise ValueError(f"output_kind must be a RequestOutputKind, got {self.output_kind!r}")

    def _validate_numbers(self) -> None:
        if not _is_int(self.n) or self.n < 1:
            raise ValueError(f"n must be an integer >= 1, got {self.n!r}")
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            if not _is_real(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not _is_real(value) or not -2.0 <= value <= 2.0:
                raise ValueError(f"{name} must be a number in [-2, 2], got {value!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not _is_int(self.top_k) or self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (disabled) or an integer >= 1, got {self.top_k!r}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise ValueError(f"max_tokens must be an integer >= 1 or None, got {self.max_tokens!r}")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise ValueError(f"min_tokens must be an integer >= 0, got {self.min_tokens!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens must be <= max_tokens, got min_tokens={self.min_tokens} "
                f"and max_tokens={self.max_tokens}"
            )
        if self.logprobs is not None and (
            not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise ValueError(
                f"logprobs must be an integer in [0, {MAX_LOGPROBS}] or None, got {self.logprobs!r}"
            )

    @staticmethod
    def _normalized_stop(stop: object) -> list[str]:
        if stop is None:
            return []
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list | tuple):
            raise ValueError(f"stop must be a string or a list of strings, got {stop!r}")
        for item in stop:
            if not isinstance(item, str) or not item:
                raise ValueError(f"stop must contain only non-empty strings, got {item!r}")
        return list(stop)

    @staticmethod
    def _normalized_stop_token_ids(stop_token_ids: object) -> list[int]:
        if stop_token_ids is None:
            return []
        if not isinstance(stop_token_ids, list | tuple):
            raise ValueError(f"stop_token_ids must be a list of integers, got {stop_token_ids!r}")
        for token_id in stop_token_ids:
            if not _is_int(token_id) or token_id < 0:
                raise ValueError(
                    f"stop_token_ids must contain only integers >= 0, got {token_id!r}"
                )
        return list(stop_token_ids)

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def sampling_type(self) -> SamplingType:
        if self.is_greedy:
            return SamplingType.GREEDY
        return SamplingType.RANDOM if self.seed is None else SamplingType.RANDOM_SEED

    @property
    def max_stop_string_length(self) -> int:
        return max((len(s) for s in self.stop), default=0)

    def sample_seed(self, index: int) -> int | None:
        """Seed of sample `index` of an `n > 1` request: `seed + index`, so samples differ."""
        if not _is_int(index) or not 0 <= index < self.n:
            raise ValueError(f"sample index must be in [0, {self.n}), got {index!r}")
        return None if self.seed is None else self.seed + index

    def for_sample(self, index: int) -> SamplingParams:
        """The parameters of one of the n samples, served by the engine as its own sequence."""
        return dataclasses.replace(self, n=1, seed=self.sample_seed(index))
