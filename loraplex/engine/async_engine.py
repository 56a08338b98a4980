"""The engine for servers: its step loop runs in a thread of its own, and each request is an
async generator of cumulative outputs.

Requests are validated and tokenized in the caller's thread (bad input raises ValueError at
once); additions and aborts reach the loop through a queue it drains between steps, so the
event loop never waits for a forward pass. A loop that dies fails every waiting request with
`EngineDeadError` and stays dead (`is_healthy` turns False).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from loraplex.engine.args import EngineArgs
from loraplex.engine.llm_engine import EngineStats, LLMEngine, PromptType
from loraplex.lora_request import LoRARequest
from loraplex.outputs import RequestOutput
from loraplex.sampling_params import SamplingParams

logger = logging.getLogger(__name__)
T = TypeVar("T")


class EngineDeadError(RuntimeError):
    """The step loop stopped on an error; the engine serves nothing more."""


@dataclass
class AsyncEngineArgs(EngineArgs):
    disable_log_requests: bool = False


class _RequestStream:
    """Delivers one request's outputs from the engine thread to its coroutine."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()

    def put(self, item: RequestOutput | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine, log_requests: bool = True) -> None:
        self.engine = engine
        self.log_requests = log_requests
        self._streams: dict[str, _RequestStream] = {}
        self._commands: queue.Queue[tuple[str, object]] = queue.Queue()
        self._wakeup = threading.Event()
        self._stopping = False
        self._error: BaseException | None = None
        self._stats = engine.stats()
        self._thread = threading.Thread(target=self._run, name="loraplex-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> AsyncLLMEngine:
        log_requests = not getattr(args, "disable_log_requests", False)
        return cls(LLMEngine.from_engine_args(args), log_requests=log_requests)

    # ---- public API -----------------------------------------------------------------------

    @property
    def is_healthy(self) -> bool:
        return self._error is None and self._thread.is_alive()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def stats(self) -> EngineStats:
        """Counters as of the last step (read without stopping the loop)."""
        return self._stats

    async def generate(
        self,
        prompt: PromptType,
        sampling_params: SamplingParams,
        request_id: str,
        lora_request: LoRARequest | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Cumulative outputs of one request until it finishes. Closing the generator early
        (a client that went away) aborts the request and frees its KV blocks."""
        self._check_alive()
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        # Tokenizing and loading an adapter from disk take a while: not on the event loop.
        request = await asyncio.to_thread(
            self.engine.make_request, request_id, prompt, sampling_params, lora_request
        )
        stream = _RequestStream(asyncio.get_running_loop())
        self._streams[request_id] = stream
        if self.log_requests:
            logger.info("request %s: %d prompt tokens", request_id, len(request.prompt_token_ids))
        self._send("add", request)
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._send("abort", request_id)

    async def call_engine(self, fn: Callable[[LLMEngine], T]) -> T:
        """Run `fn(engine)` on the engine thread between steps (adapter slots, pins, removal
        change state the step loop reads) and return its result or raise its error."""
        self._check_alive()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._send("call", (fn, future))
        return await asyncio.wrap_future(future)

    async def add_lora(self, lora_request: LoRARequest) -> bool:
        """Bring an adapter into the engine's CPU memory from a worker thread: reading it from
        disk must not stall the step loop, and the CPU tier is safe to fill from any thread.
        True if it was loaded now, False if it was there already."""
        self._check_alive()
        return await asyncio.to_thread(self.engine.add_lora, lora_request)

    async def remove_lora(self, lora_int_id: int) -> bool:
        return await self.call_engine(lambda engine: engine.remove_lora(lora_int_id))

    async def pin_lora(self, lora_int_id: int) -> bool:
        return await self.call_engine(lambda engine: engine.pin_lora(lora_int_id))

    async def list_loras(self) -> set[int]:
        return await self.call_engine(lambda engine: engine.list_loras())

    async def abort(self, request_id: str) -> None:
        self._streams.pop(request_id, None)
        self._send("abort", request_id)

    def shutdown(self) -> None:
        self._stopping = True
        self._wakeup.set()
        self._thread.join(timeout=30)
        self.engine.shutdown()

    # ---- the engine thread ----------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._error is not None:
            raise EngineDeadError(f"the engine stopped after an error: {self._error!r}")

    def _send(self, command: str, payload: object) -> None:
        self._commands.put((command, payload))
        self._wakeup.set()

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._drain_commands()
                self._stats = self.engine.stats()
                if not self.engine.has_unfinished_requests():
                    self._wakeup.wait()
                    self._wakeup.clear()
                    continue
                outputs = self.engine.step()
                for output in outputs:
                    stream = self._streams.get(output.request_id)
                    if stream is not None:
                        stream.put(output)
        except BaseException as exc:  # noqa: BLE001 - any failure kills the loop for good
            logger.exception("engine loop died")
            self._error = exc
            dead = EngineDeadError(f"the engine stopped after an error: {exc!r}")
            for stream in list(self._streams.values()):
                stream.put(dead)
            self._fail_pending_calls(dead)

    def _fail_pending_calls(self, error: BaseException) -> None:
        while True:
            try:
                command, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            if command == "call":
                payload[1].set_exception(error)

    def _drain_commands(self) -> None:
        while True:
            try:
                command, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            if command == "add":
                try:
                    self.engine.enqueue(payload)
                except ValueError as exc:
                    stream = self._streams.get(payload.request_id)
                    if stream is not None:
                        stream.put(exc)
            elif command == "call":
                fn, future = payload
                try:
                    future.set_result(fn(self.engine))
                except Exception as exc:  # noqa: BLE001 - handed to the caller
                    future.set_exception(exc)
            else:
                self.engine.abort_request(payload)
