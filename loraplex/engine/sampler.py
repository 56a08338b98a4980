"""Turns one step's logits into the next token of every row.

Processing order (vLLM's): min_tokens masking, repetition penalty, frequency and presence
penalties; greedy rows then take the argmax, the others apply temperature, top-k, top-p and
min-p and sample. Reported logprobs are always the raw ones: log_softmax of the model's logits
before any of that processing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from loraplex.engine.sampling_batch import SamplingBatch, SamplingTensors, make_generator
from loraplex.sampling_params import SamplingParams

__all__ = [
    "PendingSample",
    "Sampler",
    "SamplerOutput",
    "SamplingBatch",
    "SamplingTensors",
    "make_generator",
]


@dataclass
class SamplerOutput:
    """The step's result per row, in the batch's order."""

    token_ids: list[int]  # the chosen token
    logprobs: list[float]  # its raw logprob
    # For rows whose params set `logprobs`: the sampled token's raw logprob first, then the
    # top-`logprobs` tokens' in descending order (the sampled token appears once); else None.
    top_logprobs: list[dict[int, float] | None]


def apply_penalties(logits: torch.Tensor, tensors: SamplingTensors) -> torch.Tensor:
    """min_tokens masking, then repetition, frequency and presence penalties.

    Returns `logits` itself when no row needs any of them, else a new tensor.
    """
    if tensors.banned_rows is None and tensors.output_tokens is None:
        return logits
    logits = logits.clone()
    if tensors.banned_rows is not None:
        logits[tensors.banned_rows, tensors.banned_tokens] = float("-inf")
    if tensors.output_tokens is None:
        return logits

    rows, vocab_size = logits.shape
    # Padding ids equal vocab_size and land in an extra column that is dropped.
    counts = torch.zeros((rows, vocab_size + 1), dtype=logits.dtype, device=logits.device)
    counts.scatter_add_(
        1, tensors.output_tokens, torch.ones_like(tensors.output_tokens, dtype=logits.dtype)
    )
    counts = counts[:, :vocab_size]
    if tensors.repetition_penalty is not None:
        seen = torch.zeros((rows, vocab_size + 1), dtype=torch.bool, device=logits.device)
        seen.scatter_(1, tensors.prompt_tokens, True)
        seen = seen[:, :vocab_size] | (counts > 0)
        penalty = torch.where(seen, tensors.repetition_penalty[:, None], 1.0)
        # Dividing positive and multiplying negative logits both make the token less likely.
        logits = torch.where(logits > 0, logits / penalty, logits * penalty)
    if tensors.frequency_penalty is not None:
        logits -= tensors.frequency_penalty[:, None] * counts
    if tensors.presence_penalty is not None:
        logits -= tensors.presence_penalty[:, None] * (counts > 0)
    return logits


def _apply_top_k(logits: torch.Tensor, top_k: torch.Tensor, max_top_k: int) -> torch.Tensor:
    # topk() of the largest k needed is much cheaper than sorting the whole vocabulary.
    largest = logits.topk(max_top_k, dim=-1).values
    kth = largest.gather(1, (top_k.clamp(max=max_top_k) - 1)[:, None])
    kth = kth.masked_fill(top_k[:, None] >= logits.shape[-1], float("-inf"))
    return logits.masked_fill(logits < kth, float("-inf"))


def _apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor
) -> torch.Tensor:
    ordered, order = logits.sort(dim=-1, descending=True)
    if top_k is not None:
        # Ties with the k-th value are kept, as in the topk() path.
        kth = ordered.gather(1, (top_k - 1)[:, None])
        ordered = ordered.masked_fill(ordered < kth, float("-inf"))
    probs = ordered.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    # Keep the smallest prefix whose mass reaches top_p; rows at 1.0 keep everything even
    # when rounding lets the running sum reach 1 early.
    drop = (mass_before >= top_p[:, None]) & (top_p[:, None] < 1.0)
    drop[:, 0] = False
    ordered = ordered.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, ordered)


def truncated_probs(logits: torch.Tensor, tensors: SamplingTensors) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p; the result is proportional to the probabilities."""
    if tensors.temperature is not None:
        logits = logits / tensors.temperature[:, None]
    if tensors.top_p is not None:
        logits = _apply_top_k_top_p(logits, tensors.top_k, tensors.top_p)
    elif tensors.top_k is not None:
        logits = _apply_top_k(logits, tensors.top_k, tensors.max_top_k)
    probs = logits.softmax(dim=-1)
    if tensors.min_p is not None:
        threshold = probs.amax(dim=-1, keepdim=True) * tensors.min_p[:, None]
        probs = probs.masked_fill(probs < threshold, 0.0)
    return probs


def exponential_race(
    probs: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
) -> torch.Tensor:
    """argmax(probs / E) with E ~ Exponential(1) draws a token with probability ∝ probs.

    A seeded row draws its noise only from its own generator, so its token does not depend on
    the rest of the batch; other rows share the device's default generator.
    """
    noise = torch.empty_like(probs).exponential_()
    for row, generator in enumerate(generators):
        if generator is None or params[row].is_greedy:
            continue
        if generator.device.type != probs.device.type:
            raise ValueError(
                f"the generator of row {row} is on {generator.device}, "
                f"the logits are on {probs.device}"
            )
        noise[row].exponential_(generator=generator)
    # A zero draw would turn a zero probability into NaN, which argmax prefers.
    noise.clamp_min_(torch.finfo(noise.dtype).tiny)
    return (probs / noise).argmax(dim=-1)


class Sampler:
    """Chooses each row's next token; called once per engine step."""

    def __init__(self, vocab_size: int, eos_token_ids: set[int]) -> None:
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
        if any(not isinstance(t, int) or t < 0 for t in eos_token_ids):
            raise ValueError(f"eos_token_ids must be non-negative integers, got {eos_token_ids}")
        self.vocab_size = vocab_size
        self.eos_token_ids = set(eos_token_ids)

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        """`logits[B, V]` (float32, CPU or CUDA) of the rows of `batch`, in the same order."""
        return self.sample(logits, batch).result()

    def sample(self, logits: torch.Tensor, batch: SamplingBatch) -> PendingSample:
        """Queue the sampling of `batch` on the logits' device without waiting for it: the
        chosen ids stay on the device (`token_ids`, for the next step's input) while a copy of
        what the host needs travels back; `result()` waits for that copy."""
        expected = (len(batch), self.vocab_size)
        if logits.dim() != 2 or tuple(logits.shape) != expected:
            raise ValueError(f"logits must have shape {expected}, got {tuple(logits.shape)}")
        if not logits.is_floating_point():
            raise ValueError(f"logits must be floating point, got {logits.dtype}")
        raw = logits.float()
        tensors = SamplingTensors.from_batch(batch, self.vocab_size, self.eos_token_ids, raw.device)
        penalized = apply_penalties(raw, tensors)
        if tensors.all_greedy:
            token_ids = penalized.argmax(dim=-1)
        else:
            probs = truncated_probs(penalized, tensors)
            token_ids = exponential_race(probs, batch.params, batch.generators)
            if tensors.greedy_rows is not None:
                token_ids = torch.where(tensors.greedy_rows, penalized.argmax(dim=-1), token_ids)
        return PendingSample.start(raw, token_ids, batch.params, tensors.max_logprobs)


@dataclass
class PendingSample:
    """One step's sampled tokens: on the device now, on the host once `result()` returns."""

    token_ids: torch.Tensor  # [B] int64 on the logits' device
    params: list[SamplingParams]
    width: int  # top logprobs per row in `host`
    max_logprobs: int
    host: torch.Tensor  # [B, 2 + 2 * width] float64: token, its logprob, top values, top ids
    copied: torch.cuda.Event | None  # recorded after the device-to-host copy (CUDA only)

    @classmethod
    def start(
        cls,
        raw: torch.Tensor,
        token_ids: torch.Tensor,
        params: list[SamplingParams],
        max_logprobs: int,
    ) -> PendingSample:
        # logit - logsumexp is log_softmax for the one token needed, without a [B, V] result.
        log_normalizer = torch.logsumexp(raw, dim=-1)
        chosen = raw.gather(1, token_ids[:, None]).squeeze(1) - log_normalizer
        columns = [token_ids.double(), chosen.double()]
        width = min(max_logprobs, raw.shape[-1]) if max_logprobs > 0 else 0
        if width:
            values, indices = raw.topk(width, dim=-1)
            columns += [*(values - log_normalizer[:, None]).double().T, *indices.double().T]
        # Everything the host needs in one transfer; float64 holds every token id exactly.
        packed = torch.stack(columns, dim=1)
        copied = None
        if packed.is_cuda:
            host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            host.copy_(packed, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
        else:
            host = packed
        return cls(token_ids, params, width, max_logprobs, host, copied)

    def result(self) -> SamplerOutput:
        if self.copied is not None:
            self.copied.synchronize()
        rows = self.host.tolist()
        token_list = [int(row[0]) for row in rows]
        logprob_list = [row[1] for row in rows]
        top_logprobs: list[dict[int, float] | None] = [None] * len(self.params)
        if self.max_logprobs < 0:
            return SamplerOutput(token_list, logprob_list, top_logprobs)
        width = self.width
        for row, row_params in enumerate(self.params):
            if row_params.logprobs is None:
                continue
            entry = {token_list[row]: logprob_list[row]}
            top_values = rows[row][2 : 2 + width]
            top_ids = rows[row][2 + width : 2 + 2 * width]
            for token, value in zip(
                top_ids[: row_params.logprobs], top_values[: row_params.logprobs], strict=True
            ):
                entry.setdefault(int(token), value)
            top_logprobs[row] = entry
        return SamplerOutput(token_list, logprob_list, top_logprobs)
