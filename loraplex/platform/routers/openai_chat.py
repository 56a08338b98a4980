"""`POST /v1/chat/completions`: the model's chat template, streamed or not.

Messages are rendered with the tokenizer's chat template (as the offline `LLM.chat` does) and
generation stops at the template's end-of-turn token as well as at the model's EOS.
"""

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
from loraplex.platform.logprobs import TokenText, chat_logprobs
from loraplex.platform.protocol import ChatCompletionRequest, ChatCompletionResponse, usage_dict
from loraplex.platform.sampling import sampling_params
from loraplex.platform.state import AppState
from loraplex.platform.streaming import respond

router = APIRouter(tags=["OpenAI"])


def _chat_prompt(state: AppState, body: ChatCompletionRequest) -> EnginePrompt:
    messages = []
    for message in body.messages:
        # Chat templates know "system"; OpenAI's newer "developer" role means the same.
        rendered: dict[str, Any] = {
            "role": "system" if message.role == "developer" else message.role,
            "content": message.text(),
        }
        if message.name:
            rendered["name"] = message.name
        messages.append(rendered)
    tokenizer = state.engine.tokenizer
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # jinja2 errors raised by the template itself, or no template
        raise APIError(
            400, f"the chat template cannot render these messages: {exc}", param="messages"
        ) from exc
    # The template writes any special tokens itself.
    return EnginePrompt(tokenizer(text, add_special_tokens=False).input_ids, text)


class _ChatView:
    def __init__(self, body: ChatCompletionRequest, run: GenerationRun, text_of: TokenText) -> None:
        self.body = body
        self.run = run
        self.text_of = text_of
        self.id = run.request_id
        self.created = int(time.time())
        self.tracker = ChoiceTracker(body.n)
        self.top_logprobs = (body.top_logprobs or 0) if body.logprobs else None

    def _logprobs(self, token_ids, entries) -> dict[str, Any] | None:
        if self.top_logprobs is None or entries is None:
            return None
        return {"content": chat_logprobs(token_ids, entries, self.top_logprobs, self.text_of)}

    def _chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.body.model,
            "choices": [choice],
        }
        if self.body.include_usage:
            chunk["usage"] = None
        return chunk

    def chunks(self, prompt_index: int, output: RequestOutput) -> list[dict[str, Any]]:
        chunks = []
        for delta in self.tracker.deltas(prompt_index, output):
            if delta.first:
                chunks.append(
                    self._chunk(
                        {
                            "index": delta.index,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    )
                )
            if delta.text or delta.token_ids or delta.finish_reason:
                chunks.append(
                    self._chunk(
                        {
                            "index": delta.index,
                            "delta": {"content": delta.text} if delta.text else {},
                            "logprobs": self._logprobs(delta.token_ids, delta.logprobs),
                            "finish_reason": delta.finish_reason,
                        }
                    )
                )
        return chunks

    def final_chunks(self) -> list[dict[str, Any]]:
        if not self.body.include_usage:
            return []
        chunk = self._chunk({})
        chunk["choices"] = []
        chunk["usage"] = usage_dict(*self.run.usage())
        return [chunk]

    def response(self, outputs: list[RequestOutput]) -> ChatCompletionResponse:
        choices = [
            {
                "index": choice.index,
                "message": {"role": "assistant", "content": choice.text},
                "logprobs": self._logprobs(choice.token_ids, choice.logprobs),
                "finish_reason": choice.finish_reason,
            }
            for choice in outputs[0].outputs
        ]
        return ChatCompletionResponse(
            id=self.id,
            created=self.created,
            model=self.body.model,
            choices=choices,
            usage=usage_dict(*self.run.usage()),
        )


def _check_supported(body: ChatCompletionRequest) -> None:
    if body.tools:
        raise APIError(400, "tools are not supported", param="tools")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise APIError(400, "only the text response format is supported", param="response_format")
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletionResponse,
    summary="Answer a conversation (OpenAI-compatible)",
)
async def create_chat_completion(
    body: ChatCompletionRequest, principal: TenantDep, state: StateDep, request: Request
) -> Response | ChatCompletionResponse:
    _check_supported(body)
    prompt = await asyncio.to_thread(_chat_prompt, state, body)
    requested, param = body.max_tokens, "max_tokens"
    if body.max_completion_tokens is not None:
        requested, param = body.max_completion_tokens, "max_completion_tokens"
    view_logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = sampling_params(
        body,
        max_tokens=completion_budget(
            requested,
            len(prompt.token_ids),
            state.max_model_len,
            param=param,
            prompt_param="messages",
        ),
        logprobs=view_logprobs,
        stop_token_ids=state.chat_stop_token_ids,
        max_n=state.settings.max_n,
    )
    run = await start_generation(
        state,
        principal,
        model=body.model,
        prompts=[prompt],
        params=[params],
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
    )
    view = _ChatView(body, run, TokenText(state.engine.tokenizer))
    return await respond(run, view, request, stream=body.stream)
