"""Running one API call on the engine: admission, quotas, the model's adapter, the engine
requests (one per prompt), metrics and usage.

`start_generation` refuses at once what must not run (queue full: 503; over a rate limit: 429;
unknown model: 404) and otherwise returns a `GenerationRun`, whose `outputs()` merges the
prompts' cumulative outputs into one stream. `close()` must follow in every case: it aborts what
still runs (a client that went away frees its KV blocks and slot reference), releases the
request's place in the queue and its adapter, and records the tokens used.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

from loraplex.adapters.errors import NotFoundError
from loraplex.adapters.registry import parse_adapter_reference, resolve_adapter
from loraplex.adapters.usage import record_usage
from loraplex.lora_request import LoRARequest
from loraplex.outputs import RequestOutput
from loraplex.platform.adapter_loading import ResolvedAdapter
from loraplex.platform.admission import Overloaded
from loraplex.platform.deps import Principal
from loraplex.platform.errors import APIError, model_not_found
from loraplex.platform.quotas import RateLimited
from loraplex.platform.references import local_reference
from loraplex.platform.state import AppState
from loraplex.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnginePrompt:
    token_ids: list[int]
    text: str | None = None  # the prompt as the client wrote it, for `echo`


def completion_budget(
    requested: int | None,
    prompt_tokens: int,
    max_model_len: int,
    *,
    param: str,
    prompt_param: str,
) -> int:
    """The max_tokens to run with: `requested`, or all the room left; 400 if it cannot fit."""
    room = max_model_len - prompt_tokens
    if room < 1:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens, and the prompt "
            f"has {prompt_tokens}; shorten the prompt.",
            code="context_length_exceeded",
            param=prompt_param,
        )
    if requested is None:
        return room
    if requested > room:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, "
            f"{requested} for the completion); reduce the prompt or {param}.",
            code="context_length_exceeded",
            param=param,
        )
    return requested


def _refusal(status: int, exc: RateLimited | Overloaded, code: str) -> APIError:
    return APIError(status, str(exc), code=code, headers={"Retry-After": str(exc.retry_after)})


async def resolve_model(
    state: AppState, principal: Principal, model: str
) -> ResolvedAdapter | None:
    """None for the base model, else the tenant's adapter version that `model` names (404 for
    anything else, including another tenant's adapter, by its short or qualified name)."""
    if model == state.served_model_name:
        return None
    tenant_id = principal.tenant_id
    assert tenant_id is not None  # generation endpoints take tenant keys only

    def lookup() -> ResolvedAdapter:
        reference = local_reference(model, principal)
        with state.sessions() as session:
            row = resolve_adapter(session=session, tenant_id=tenant_id, reference=reference)
            name, _ = parse_adapter_reference(reference)
            return ResolvedAdapter.from_row(tenant_id, name, row)

    try:
        return await asyncio.to_thread(lookup)
    except (NotFoundError, ValueError):
        raise model_not_found(model) from None


async def start_generation(
    state: AppState,
    principal: Principal,
    *,
    model: str,
    prompts: list[EnginePrompt],
    params: list[SamplingParams],
    request_id: str,
) -> GenerationRun:
    metrics = state.metrics
    if not state.engine.is_healthy:
        # Refused before any response starts, so that a streamed request gets the 503 too.
        raise APIError(503, "the engine stopped after an error; see /health", code="engine_dead")
    try:
        ticket = state.admission.admit(sum(p.n for p in params))
    except Overloaded as exc:
        metrics.rejections.labels("overloaded").inc()
        raise _refusal(503, exc, "overloaded") from None
    stack = AsyncExitStack()
    stack.callback(ticket.release)
    tenant_id = principal.tenant_id
    assert tenant_id is not None
    try:
        try:
            state.limiter.admit_request(tenant_id, principal.requests_per_minute)
            adapter = await resolve_model(state, principal, model)
            prompt_tokens = sum(len(p.token_ids) for p in prompts)
            state.limiter.check_tokens(tenant_id, principal.tokens_per_minute, prompt_tokens)
        except RateLimited as exc:
            metrics.rejections.labels("rate_limited").inc()
            raise _refusal(429, exc, "rate_limit_exceeded") from None
        lora = None
        if adapter is not None:
            lora = await stack.enter_async_context(state.adapters.hold(adapter))
    except BaseException:
        await stack.aclose()
        raise
    metrics.tenant_requests.labels(principal.tenant_name).inc()
    run = GenerationRun(
        state,
        principal,
        adapter_version_id=adapter.version_id if adapter is not None else None,
        lora=lora,
        prompts=prompts,
        params=params,
        request_id=request_id,
        stack=stack,
    )
    run.start()
    return run


class _Finished:
    def __init__(self, index: int) -> None:
        self.index = index


class GenerationRun:
    def __init__(
        self,
        state: AppState,
        principal: Principal,
        *,
        adapter_version_id: int | None,
        lora: LoRARequest | None,
        prompts: list[EnginePrompt],
        params: list[SamplingParams],
        request_id: str,
        stack: AsyncExitStack,
    ) -> None:
        self.state = state
        self.principal = principal
        self.adapter_version_id = adapter_version_id
        self.lora = lora
        self.prompts = prompts
        self.params = params
        self.request_id = request_id
        self._stack = stack
        self._queue: asyncio.Queue[tuple[int, RequestOutput] | _Finished | BaseException] = (
            asyncio.Queue()
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.latest: list[RequestOutput | None] = [None] * len(prompts)
        self._started = time.perf_counter()
        self._first_token_at: list[float | None] = [None] * len(prompts)
        self._closed = False

    def start(self) -> None:
        for index in range(len(self.prompts)):
            self._tasks.append(asyncio.create_task(self._pump(index)))

    async def _pump(self, index: int) -> None:
        generator = self.state.engine.generate(
            self.prompts[index].token_ids,
            self.params[index],
            f"{self.request_id}-{index}",
            lora_request=self.lora,
        )
        try:
            async for output in generator:
                self._queue.put_nowait((index, output))
        except Exception as exc:  # handed to the consumer, which answers with it
            self._queue.put_nowait(exc)
        else:
            self._queue.put_nowait(_Finished(index))
        finally:
            await generator.aclose()

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, cumulative output) as the engine produces them, until all finish."""
        remaining = len(self.prompts)
        while remaining:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, _Finished):
                remaining -= 1
                continue
            index, output = item
            self._observe(index, output)
            yield index, output

    async def collect(self) -> list[RequestOutput]:
        async for _ in self.outputs():
            pass
        return [output for output in self.latest if output is not None]

    def _observe(self, index: int, output: RequestOutput) -> None:
        self.latest[index] = output
        now = time.perf_counter()
        metrics = self.state.metrics
        if self._first_token_at[index] is None and any(c.token_ids for c in output.outputs):
            self._first_token_at[index] = now
            metrics.time_to_first_token.observe(now - self._started)
        if output.finished:
            metrics.e2e_latency.observe(now - self._started)
            first = self._first_token_at[index]
            longest = max((len(c.token_ids) for c in output.outputs), default=0)
            if first is not None and longest > 1:
                metrics.time_per_output_token.observe((now - first) / (longest - 1))

    async def close(self) -> None:
        """Abort what still runs, record usage, then release the queue place and the adapter
        (so a request counts as in flight until its usage is on record)."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._settle()
        finally:
            await self._stack.aclose()

    def usage(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens) of what ran so far."""
        prompt = completion = 0
        for prompt_input, output in zip(self.prompts, self.latest, strict=True):
            if output is None:
                continue
            prompt += len(prompt_input.token_ids)
            completion += sum(len(choice.token_ids) for choice in output.outputs)
        return prompt, completion

    async def _settle(self) -> None:
        prompt, completion = self.usage()
        if prompt == 0:
            return  # nothing reached the engine
        tenant_id = self.principal.tenant_id
        assert tenant_id is not None
        metrics = self.state.metrics
        metrics.prompt_tokens.inc(prompt)
        metrics.generation_tokens.inc(completion)
        metrics.tenant_tokens.labels(self.principal.tenant_name, "prompt").inc(prompt)
        metrics.tenant_tokens.labels(self.principal.tenant_name, "completion").inc(completion)
        self.state.limiter.record_tokens(tenant_id, prompt + completion)

        def write() -> None:
            with self.state.sessions() as session:
                record_usage(
                    session=session,
                    tenant_id=tenant_id,
                    adapter_version_id=self.adapter_version_id,
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                )

        try:
            await asyncio.to_thread(write)
        except Exception:
            logger.exception("could not record usage of request %s", self.request_id)
