"""Translating an OpenAI request's sampling fields into the engine's `SamplingParams`."""

from __future__ import annotations

from loraplex.platform.errors import APIError
from loraplex.platform.protocol import _SamplingFields
from loraplex.sampling_params import SamplingParams


def sampling_params(
    body: _SamplingFields,
    *,
    max_tokens: int,
    logprobs: int | None,
    stop_token_ids: list[int],
    max_n: int,
) -> SamplingParams:
    """SamplingParams for one prompt of `body`; a 400 naming the field for what cannot run."""
    if body.n > max_n:
        raise APIError(400, f"n must be at most {max_n} on this server, got {body.n}", param="n")
    if body.logit_bias:
        raise APIError(400, "logit_bias is not supported", param="logit_bias")
    try:
        return SamplingParams(
            n=body.n,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=-1 if body.top_k is None else body.top_k,
            min_p=body.min_p,
            repetition_penalty=body.repetition_penalty,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            seed=body.seed,
            max_tokens=max_tokens,
            min_tokens=body.min_tokens,
            stop=body.stop,
            stop_token_ids=stop_token_ids,
            ignore_eos=body.ignore_eos,
            logprobs=logprobs,
        )
    except ValueError as exc:
        raise APIError(400, str(exc), code="invalid_value") from exc
