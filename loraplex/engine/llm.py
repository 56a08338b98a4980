"""The offline API: vLLM's `LLM` class, so its users change one import line."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

from loraplex.engine.args import EngineArgs
from loraplex.engine.llm_engine import LLMEngine, PromptType
from loraplex.lora_request import LoRARequest
from loraplex.outputs import RequestOutput
from loraplex.sampling_params import RequestOutputKind, SamplingParams

Message = dict[str, Any]


class LLM:
    def __init__(
        self,
        model: str,
        tokenizer: str | None = None,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        trust_remote_code: bool = False,
        quantization: str | None = None,
        kv_cache_dtype: str = "auto",
        enable_lora: bool = False,
        max_loras: int = 4,
        max_lora_rank: int = 16,
        max_cpu_loras: int | None = None,
        seed: int = 0,
        device: str = "auto",
        **kwargs: Any,
    ) -> None:
        args = EngineArgs(
            model=model,
            tokenizer=tokenizer,
            dtype=dtype,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            trust_remote_code=trust_remote_code,
            quantization=quantization,
            kv_cache_dtype=kv_cache_dtype,
            enable_lora=enable_lora,
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,
            max_cpu_loras=max_cpu_loras,
            seed=seed,
            device=device,
            **kwargs,
        )
        self.llm_engine = LLMEngine.from_engine_args(args)
        self._request_ids = itertools.count()

    def get_tokenizer(self) -> Any:
        return self.llm_engine.tokenizer

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Generate for one prompt or many; outputs come back in prompt order."""
        prompt_list = _as_prompt_list(prompts)
        params = _per_prompt(
            sampling_params or SamplingParams(), len(prompt_list), "sampling_params"
        )
        loras = _per_prompt(lora_request, len(prompt_list), "lora_request")
        return self._run(prompt_list, params, loras)

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Apply the tokenizer's chat template to one conversation or a list, then generate."""
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
        conversations = [messages] if isinstance(messages[0], dict) else messages
        tokenizer = self.get_tokenizer()
        prompts: list[PromptType] = []
        for conversation in conversations:
            _check_conversation(conversation)
            text = tokenizer.apply_chat_template(
                conversation,
                chat_template=chat_template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
            )
            # The template writes any special tokens itself.
            prompts.append(tokenizer(text, add_special_tokens=False).input_ids)
        return self.generate(prompts, sampling_params, lora_request)

    def _run(
        self,
        prompts: list[PromptType],
        params: list[SamplingParams],
        loras: list[LoRARequest | None],
    ) -> list[RequestOutput]:
        engine = self.llm_engine
        ids = [str(next(self._request_ids)) for _ in prompts]
        # Only finished outputs are returned here, so the engine need build no others.
        params = [
            dataclasses.replace(p, output_kind=RequestOutputKind.FINAL_ONLY)
            if isinstance(p, SamplingParams)
            else p
            for p in params
        ]
        try:
            for request_id, prompt, param, lora in zip(ids, prompts, params, loras, strict=True):
                engine.add_request(request_id, prompt, param, lora_request=lora)
        except ValueError:
            engine.abort_request(ids)
            raise
        finished: dict[str, RequestOutput] = {}
        while len(finished) < len(ids):
            for output in engine.step():
                if output.finished:
                    finished[output.request_id] = output
        return [finished[request_id] for request_id in ids]


def _as_prompt_list(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
    if isinstance(prompts, str | dict):
        return [prompts]
    if isinstance(prompts, list | tuple):
        if not prompts:
            raise ValueError("no prompts given")
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompts):
            return [list(prompts)]  # one token-id prompt
        return list(prompts)
    raise ValueError(f"prompts must be a string, token ids, or a list of them, got {prompts!r}")


def _per_prompt(value: Any, count: int, name: str) -> list[Any]:
    if isinstance(value, list | tuple):
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} entries for {count} prompts")
        return list(value)
    return [value] * count


def _check_conversation(conversation: Any) -> None:
    if not isinstance(conversation, list) or not conversation:
        raise ValueError("a conversation must be a non-empty list of messages")
    for message in conversation:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"each message needs 'role' and 'content', got {message!r}")
