"""ASGI middleware: request counts by route and status, and the upload size guard.

Both are plain ASGI rather than Starlette's BaseHTTPMiddleware, which buffers streamed
responses and hides client disconnects from the streaming code.
"""

from __future__ import annotations

import json
import re

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraplex.platform.errors import error_body

UPLOAD_PATH = "/v1/adapters"
UPLOAD_PATHS = re.compile(re.escape(UPLOAD_PATH))
# Room for the multipart envelope (boundaries, headers, the name field) around the files.
MULTIPART_SLACK_BYTES = 1024 * 1024


class HTTPMetricsMiddleware:
    """Counts every request by its route template (not the raw path: ids would explode the
    label set), method and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            state = getattr(scope["app"].state, "loraplex", None)
            if state is not None:
                state.metrics.http_requests.labels(endpoint, scope["method"], str(status)).inc()


async def _send_too_large(send: Send, limit: int) -> None:
    body = json.dumps(
        error_body(413, f"the upload exceeds the server's limit of {limit} bytes", code="too_large")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class UploadSizeLimitMiddleware:
    """Refuses an adapter upload larger than the platform's limit before it is spooled to disk:
    at once from its Content-Length, or as soon as a body without one grows past the limit.
    Uploads are the POSTs to a path that `paths` matches in full."""

    def __init__(self, app: ASGIApp, max_bytes: int, paths: re.Pattern[str] = UPLOAD_PATHS) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or self.paths.fullmatch(scope["path"]) is None
        ):
            await self.app(scope, receive, send)
            return
        cap = self.max_bytes + MULTIPART_SLACK_BYTES
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > cap:
            await _send_too_large(send, self.max_bytes)
            return
        received = 0
        refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    refused = True
                    await _send_too_large(send, self.max_bytes)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:  # after the 413 nothing else may go out
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except ClientDisconnect:
            if not refused:
                raise
