"""`POST /v1/completions`: text completion of one prompt or a batch, streamed or not."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from loraplex.outputs import RequestOutput
from loraplex.platform.deltas import ChoiceTracker
from loraplex.platform.deps import StateDep, TenantDep
from loraplex.platform.errors import APIError
from loraplex.platform.generation import (
    EnginePrompt,
    GenerationRun,
    completion_budget,
    start_generation,
)
from loraplex.platform.logprobs import TokenText, completion_logprobs
from loraplex.platform.protocol import (
    MAX_PROMPTS,
    CompletionRequest,
    CompletionResponse,
    usage_dict,
)
from loraplex.platform.sampling import sampling_params
from loraplex.platform.state import AppState
from loraplex.platform.streaming import respond

router = APIRouter(tags=["OpenAI"])


def _engine_prompts(state: AppState, prompt: Any) -> list[EnginePrompt]:
    """One EnginePrompt per prompt of the request, tokenized as the offline `LLM` does."""
    if isinstance(prompt, str) or isinstance(prompt[0], int):
        prompt = [prompt]  # one prompt, as text or as token ids
    if len(prompt) > MAX_PROMPTS:
        raise APIError(400, f"at most {MAX_PROMPTS} prompts per request", param="prompt")
    prompts = []
    for item in prompt:
        if isinstance(item, str):
            prompts.append(EnginePrompt(state.engine.tokenizer(item).input_ids, item))
            continue
        outside = [token for token in item if token >= state.vocab_size]
        if outside:
            raise APIError(
                400,
                f"prompt token ids {outside[:5]} are outside the vocabulary "
                f"[0, {state.vocab_size})",
                param="prompt",
            )
        prompts.append(EnginePrompt(list(item), state.engine.tokenizer.decode(item)))
    return prompts


class _CompletionView:
    """Renders the run's outputs as completion chunks and as the final response."""

    def __init__(self, body: CompletionRequest, run: GenerationRun, text_of: TokenText) -> None:
        self.body = body
        self.run = run
        self.text_of = text_of
        self.id = run.request_id
        self.created = int(time.time())
        self.tracker = ChoiceTracker(body.n)

    def _prefix(self, choice_index: int) -> str:
        """The prompt text that `echo` puts before the choice's completion."""
        if not self.body.echo:
            return ""
        return self.run.prompts[choice_index // self.body.n].text or ""

    def _logprobs(self, token_ids, entries, offset: int) -> dict[str, Any] | None:
        if self.body.logprobs is None or entries is None:
            return None
        return completion_logprobs(token_ids, entries, self.body.logprobs, self.text_of, offset)

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk = {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.body.model,
            "choices": choices,
        }
        if self.body.include_usage:
            chunk["usage"] = None
        return chunk

    def chunks(self, prompt_index: int, output: RequestOutput) -> list[dict[str, Any]]:
        choices = []
        for delta in self.tracker.deltas(prompt_index, output):
            text = (self._prefix(delta.index) if delta.first else "") + delta.text
            choices.append(
                {
                    "index": delta.index,
                    "text": text,
                    "logprobs": self._logprobs(delta.token_ids, delta.logprobs, 0),
                    "finish_reason": delta.finish_reason,
                }
            )
        return [self._envelope(choices)] if choices else []

    def final_chunks(self) -> list[dict[str, Any]]:
        if not self.body.include_usage:
            return []
        chunk = self._envelope([])
        chunk["usage"] = usage_dict(*self.run.usage())
        return [chunk]

    def response(self, outputs: list[RequestOutput]) -> CompletionResponse:
        choices = []
        for prompt_index, output in enumerate(outputs):
            for choice in output.outputs:
                index = prompt_index * self.body.n + choice.index
                prefix = self._prefix(index)
                choices.append(
                    {
                        "index": index,
                        "text": prefix + choice.text,
                        "logprobs": self._logprobs(choice.token_ids, choice.logprobs, len(prefix)),
                        "finish_reason": choice.finish_reason,
                    }
                )
        return CompletionResponse(
            id=self.id,
            created=self.created,
            model=self.body.model,
            choices=choices,
            usage=usage_dict(*self.run.usage()),
        )


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    summary="Complete a prompt (OpenAI-compatible)",
)
async def create_completion(
    body: CompletionRequest, principal: TenantDep, state: StateDep, request: Request
) -> Response | CompletionResponse:
    if body.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of must equal n (or be left out)", param="best_of")
    if body.echo and body.logprobs is not None:
        raise APIError(400, "echo together with logprobs is not supported", param="echo")
    prompts = await asyncio.to_thread(_engine_prompts, state, body.prompt)
    params = [
        sampling_params(
            body,
            max_tokens=completion_budget(
                body.max_tokens,
                len(p.token_ids),
                state.max_model_len,
                param="max_tokens",
                prompt_param="prompt",
            ),
            logprobs=body.logprobs,
            stop_token_ids=[],
            max_n=state.settings.max_n,
        )
        for p in prompts
    ]
    run = await start_generation(
        state,
        principal,
        model=body.model,
        prompts=prompts,
        params=params,
        request_id=f"cmpl-{uuid.uuid4().hex}",
    )
    view = _CompletionView(body, run, TokenText(state.engine.tokenizer))
    return await respond(run, view, request, stream=body.stream)
