"""Server-sent events for streamed completions, and client disconnects for both kinds.

A streamed response ends with `data: [DONE]`. Whatever way it ends (finished, failed, or the
client went away mid-stream), `SSEResponse` runs the run's `close()` once the body is done, so
the engine requests are aborted and their KV blocks freed: Starlette alone would leave a body
generator suspended when a write to a closed socket fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from loraplex.platform.errors import as_api_error
from loraplex.platform.generation import GenerationRun

logger = logging.getLogger(__name__)

DONE_EVENT = "data: [DONE]\n\n"
DISCONNECT_POLL_SECONDS = 0.25
# Status logged for a request whose client left before the answer (nginx's convention).
CLIENT_CLOSED_REQUEST = 499


def sse_event(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


class SSEResponse(StreamingResponse):
    def __init__(
        self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]
    ) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (ClientDisconnect, OSError):
            logger.debug("client left a stream mid-way")
        finally:
            body = self.body_iterator
            if hasattr(body, "aclose"):
                await body.aclose()
            await self._on_close()


Render = Callable[[int, Any], list[dict[str, Any]]]


async def event_stream(
    run: GenerationRun, render: Render, final: Callable[[], list[dict[str, Any]]]
) -> AsyncIterator[str]:
    """SSE events: `render(prompt_index, output)` for each engine output, then `final()`, then
    [DONE]. An error after the headers went out becomes an error event (the status is sent)."""
    try:
        async for index, output in run.outputs():
            for payload in render(index, output):
                yield sse_event(payload)
        for payload in final():
            yield sse_event(payload)
    except Exception as exc:
        error = as_api_error(exc)
        if error is None:
            logger.exception("stream %s failed", run.request_id)
            yield sse_event({"error": {"message": "internal server error", "type": "server_error"}})
        else:
            yield sse_event(error.body())
    yield DONE_EVENT


async def _wait_for_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)


async def collect_unless_disconnected(run: GenerationRun, request: Request) -> list[Any] | None:
    """The run's final outputs, or None (the run aborted) if the client left first."""
    collecting = asyncio.ensure_future(run.collect())
    watching = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({collecting, watching}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        collecting.cancel()
        raise
    finally:
        watching.cancel()
    if collecting.done():
        return collecting.result()
    collecting.cancel()
    await asyncio.gather(collecting, return_exceptions=True)
    return None


def client_gone_response() -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)


async def respond(run: GenerationRun, view: Any, request: Request, *, stream: bool) -> Response:
    """The answer to a started generation: server-sent events of the view's chunks, or the
    view's whole response once every output is in (a client gone meanwhile aborts the run)."""
    if stream:
        return SSEResponse(event_stream(run, view.chunks, view.final_chunks), on_close=run.close)
    try:
        outputs = await collect_unless_disconnected(run, request)
    finally:
        await run.close()
    if outputs is None:
        return client_gone_response()
    return view.response(outputs)
