"""The rows of one sampling step and the tensors the sampler needs for them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from loraplex.sampling_params import SamplingParams

_SEED_MASK = (1 << 64) - 1


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator for one seeded sequence; any int seed works (it is taken modulo 2**64).

    The engine creates it once when the sequence starts, from `params.sample_seed(i)` for
    sample i of an `n > 1` request, and passes it in every `SamplingBatch` of that sequence.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(seed & _SEED_MASK)
    return generator


@dataclass
class SamplingBatch:
    """The rows of one step that need a token, in the order of the logits' rows."""

    params: list[SamplingParams]  # each row's sampling parameters
    # Each row's prompt, read only for rows with a repetition penalty. A numpy int array is
    # copied without converting every token, worth keeping for long prompts.
    prompt_token_ids: list[Sequence[int] | np.ndarray]
    output_token_ids: list[Sequence[int] | np.ndarray]  # tokens each row generated so far
    generators: list[torch.Generator | None]  # a seeded row's own generator, else None
    # Async scheduling: a row's newest output token may still be on the device only, at
    # `pending_tokens[pending_rows[row]]` (-1: none); it counts for penalties and min_tokens.
    pending_rows: list[int] | None = None
    pending_tokens: torch.Tensor | None = None

    def __post_init__(self) -> None:
        rows = len(self.params)
        for name in ("prompt_token_ids", "output_token_ids", "generators"):
            if len(getattr(self, name)) != rows:
                raise ValueError(
                    f"SamplingBatch.{name} has {len(getattr(self, name))} rows, params has {rows}"
                )
        if self.pending_rows is not None:
            if len(self.pending_rows) != rows:
                raise ValueError(f"SamplingBatch.pending_rows has {len(self.pending_rows)} rows")
            if self.pending_tokens is None and any(r >= 0 for r in self.pending_rows):
                raise ValueError("SamplingBatch has pending rows but no pending_tokens")

    def pending_row(self, row: int) -> int:
        """Where row `row`'s token still on the device is in `pending_tokens`; -1 if none."""
        return -1 if self.pending_rows is None else self.pending_rows[row]

    def num_outputs(self, row: int) -> int:
        """Tokens row `row` has generated, one still on the device included."""
        return len(self.output_token_ids[row]) + (self.pending_row(row) >= 0)

    def __len__(self) -> int:
        return len(self.params)


def _padded_tokens(
    token_lists: list[Sequence[int] | np.ndarray], pad_id: int, device: torch.device
) -> torch.Tensor:
    width = max(1, max(len(tokens) for tokens in token_lists))
    padded = np.full((len(token_lists), width), pad_id, dtype=np.int64)
    for row, tokens in enumerate(token_lists):
        padded[row, : len(tokens)] = tokens
    return torch.from_numpy(padded).to(device, non_blocking=True)


def _row_values(
    values: list[float] | list[int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


@dataclass
class SamplingTensors:
    """Per-step tensors of a `SamplingBatch`. A field no row needs is None, so the common
    all-greedy step without penalties builds no tensor at all."""

    all_greedy: bool  # every row takes the argmax
    greedy_rows: torch.Tensor | None  # [B] bool, only when greedy and random rows mix
    temperature: torch.Tensor | None  # [B] float32, 1.0 on greedy rows
    top_k: torch.Tensor | None  # [B] int64 in [1, V]; V keeps every token
    max_top_k: int  # largest top_k below V, so top-k can use topk() instead of a full sort
    top_p: torch.Tensor | None  # [B] float32
    min_p: torch.Tensor | None  # [B] float32
    repetition_penalty: torch.Tensor | None  # [B] float32
    frequency_penalty: torch.Tensor | None  # [B] float32
    presence_penalty: torch.Tensor | None  # [B] float32
    prompt_tokens: torch.Tensor | None  # [B, Lp] int64 padded with V; rows without penalty empty
    output_tokens: torch.Tensor | None  # [B, Lo] int64 padded with V; rows without penalty empty
    banned_rows: torch.Tensor | None  # [N] int64: (row, token) pairs masked by min_tokens
    banned_tokens: torch.Tensor | None  # [N] int64
    max_logprobs: int  # most top logprobs any row asked for; -1 when none asked

    @classmethod
    def from_batch(
        cls,
        batch: SamplingBatch,
        vocab_size: int,
        eos_token_ids: set[int],
        device: torch.device,
    ) -> SamplingTensors:
        params = batch.params
        greedy = [p.is_greedy for p in params]
        all_greedy = all(greedy)
        random_params = [p for p, g in zip(params, greedy, strict=True) if not g]

        temperature = top_k = top_p = min_p = greedy_rows = None
        max_top_k = vocab_size
        if random_params:
            if any(greedy):
                greedy_rows = torch.tensor(greedy, dtype=torch.bool).to(device)
            if any(p.temperature != 1.0 for p in random_params):
                temps = [1.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)]
                temperature = _row_values(temps, torch.float32, device)
            ks = [
                vocab_size if g or p.top_k == -1 else min(p.top_k, vocab_size)
                for p, g in zip(params, greedy, strict=True)
            ]
            if any(k < vocab_size for k in ks):
                max_top_k = max(k for k in ks if k < vocab_size)
                top_k = _row_values(ks, torch.int64, device)
            if any(p.top_p < 1.0 for p in random_params):
                ps = [1.0 if g else p.top_p for p, g in zip(params, greedy, strict=True)]
                top_p = _row_values(ps, torch.float32, device)
            if any(p.min_p > 0.0 for p in random_params):
                min_p = _row_values([p.min_p for p in params], torch.float32, device)

        penalties = cls._penalty_tensors(batch, vocab_size, device)
        banned_rows, banned_tokens = cls._min_tokens_bans(batch, vocab_size, eos_token_ids, device)
        return cls(
            all_greedy=all_greedy,
            greedy_rows=greedy_rows,
            temperature=temperature,
            top_k=top_k,
            max_top_k=max_top_k,
            top_p=top_p,
            min_p=min_p,
            **penalties,
            banned_rows=banned_rows,
            banned_tokens=banned_tokens,
            max_logprobs=max((p.logprobs for p in params if p.logprobs is not None), default=-1),
        )

    @staticmethod
    def _penalty_tensors(
        batch: SamplingBatch, vocab_size: int, device: torch.device
    ) -> dict[str, torch.Tensor | None]:
        params = batch.params
        fields: dict[str, torch.Tensor | None] = dict.fromkeys(
            (
                "repetition_penalty",
                "frequency_penalty",
                "presence_penalty",
                "prompt_tokens",
                "output_tokens",
            )
        )
        uses_repetition = [p.repetition_penalty != 1.0 for p in params]
        uses_frequency = [p.frequency_penalty != 0.0 for p in params]
        uses_presence = [p.presence_penalty != 0.0 for p in params]
        if any(uses_repetition):
            fields["repetition_penalty"] = _row_values(
                [p.repetition_penalty for p in params], torch.float32, device
            )
            prompts = [
                ids if used else []
                for ids, used in zip(batch.prompt_token_ids, uses_repetition, strict=True)
            ]
            fields["prompt_tokens"] = _padded_tokens(prompts, vocab_size, device)
        if any(uses_frequency):
            fields["frequency_penalty"] = _row_values(
                [p.frequency_penalty for p in params], torch.float32, device
            )
        if any(uses_presence):
            fields["presence_penalty"] = _row_values(
                [p.presence_penalty for p in params], torch.float32, device
            )
        penalized = [
            r or f or p
            for r, f, p in zip(uses_repetition, uses_frequency, uses_presence, strict=True)
        ]
        if any(penalized):
            outputs = [
                ids if used else []
                for ids, used in zip(batch.output_token_ids, penalized, strict=True)
            ]
            # A token still on the device goes after the row's known ones, filled in there.
            fill = [
                (row, len(outputs[row]), batch.pending_row(row))
                for row, used in enumerate(penalized)
                if used and batch.pending_row(row) >= 0
            ]
            waiting = {row for row, _, _ in fill}
            outputs = [
                [*ids, vocab_size] if row in waiting else ids for row, ids in enumerate(outputs)
            ]
            tokens = _padded_tokens(outputs, vocab_size, device)
            if fill:
                rows, columns, sources = torch.tensor(fill, device=device).T
                tokens[rows, columns] = batch.pending_tokens[sources].to(tokens.dtype)
            fields["output_tokens"] = tokens
        return fields

    @staticmethod
    def _min_tokens_bans(
        batch: SamplingBatch, vocab_size: int, eos_token_ids: set[int], device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        rows: list[int] = []
        tokens: list[int] = []
        for row, params in enumerate(batch.params):
            if batch.num_outputs(row) >= params.min_tokens:
                continue
            banned = set(params.stop_token_ids)
            if not params.ignore_eos:
                banned |= eos_token_ids
            # An id beyond the logits can never be sampled, so there is nothing to mask.
            banned = sorted(t for t in banned if t < vocab_size)
            rows.extend([row] * len(banned))
            tokens.extend(banned)
        if not rows:
            return None, None
        return _row_values(rows, torch.int64, device), _row_values(tokens, torch.int64, device)
