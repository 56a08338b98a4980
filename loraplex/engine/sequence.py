"""Requests and the sequences they generate.

A request with `n` samples becomes `n` independent sequences: each is scheduled, paged and
preempted on its own (as vLLM V1 fans out parallel sampling), and the request gathers their
outputs.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from loraplex.lora_request import LoRARequest
    from loraplex.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @property
    def is_finished(self) -> bool:
        return self in _FINISHED


_FINISHED = {
    SequenceStatus.FINISHED_STOPPED,
    SequenceStatus.FINISHED_LENGTH,
    SequenceStatus.FINISHED_ABORTED,
}


class Request:
    """What a caller asked for: one prompt, its sampling parameters and optional adapter."""

    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        lora_request: LoRARequest | None = None,
        arrival_time: float | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.lora_request = lora_request
        self.lora_adapter: Any = None  # the loaded adapter, held for the request's whole life
        self.arrival_time = arrival_time if arrival_time is not None else time.monotonic()
        self.seqs: list[Sequence] = []
        self._prompt_array: np.ndarray | None = None

    @property
    def prompt_array(self) -> np.ndarray:
        """The prompt as an int64 array, made once: penalties read it every step, and copying
        a numpy array is much cheaper than converting a list of Python ints."""
        if self._prompt_array is None:
            self._prompt_array = np.asarray(self.prompt_token_ids, dtype=np.int64)
        return self._prompt_array

    @property
    def is_finished(self) -> bool:
        return all(seq.status.is_finished for seq in self.seqs)


class Sequence:
    """One continuation of a request's prompt: the unit of scheduling and KV paging."""

    def __init__(
        self,
        seq_id: int,
        request: Request,
        index: int,
        params: SamplingParams,
        generator: torch.Generator | None,
        detokenizer: Any,
    ) -> None:
        self.seq_id = seq_id
        self.request = request
        self.index = index  # position among the request's n samples
        self.params = params  # this sample's own parameters (its seed differs when n > 1)
        self.token_ids: list[int] = list(request.prompt_token_ids)
        # Kept beside token_ids so reading them each step costs no copy of the whole sequence.
        self.output_token_ids: list[int] = []
        self.num_prompt_tokens = len(request.prompt_token_ids)
        # Tokens whose K/V are in the cache; reset to 0 when preempted (recomputed later).
        self.num_computed_tokens = 0
        # Tokens sampled on the device whose values the host has not read yet (async
        # scheduling): they count as the sequence's last tokens, and a step that computes one
        # takes its id from row `pending_row` of the previous step's sampled tokens.
        self.num_pending = 0
        self.pending_row = -1
        self.block_table: list[int] = []
        self.status = SequenceStatus.WAITING
        self.generator = generator
        self.detokenizer = detokenizer
        self.text = ""
        self.cumulative_logprob = 0.0
        self.logprobs: list[dict[int, float]] | None = (
            [] if request.params.logprobs is not None else None
        )
        # How much of the output earlier DELTA outputs already carried.
        self.sent_tokens = 0
        self.sent_chars = 0
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) + self.num_pending

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    def append_token(
        self, token_id: int, logprob: float, top_logprobs: dict[int, float] | None
    ) -> None:
        self.token_ids.append(token_id)
        self.output_token_ids.append(token_id)
        self.cumulative_logprob += logprob
        if self.logprobs is not None:
            self.logprobs.append(top_logprobs or {token_id: logprob})

    def finish(self, status: SequenceStatus, reason: str, stop_reason: int | str | None) -> None:
        self.status = status
        self.finish_reason = reason
        self.stop_reason = stop_reason
