"""The FastAPI application: routers, error handlers, middleware, and the lifespan that loads
the model and connects the registry before the first request is served."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from loraplex import __version__
from loraplex.platform import dashboard
from loraplex.platform.errors import install_error_handlers
from loraplex.platform.middleware import (
    UPLOAD_PATHS,
    HTTPMetricsMiddleware,
    UploadSizeLimitMiddleware,
)
from loraplex.platform.routers import ALL_ROUTERS
from loraplex.platform.settings import Settings, get_settings
from loraplex.platform.state import close_state, open_state

DESCRIPTION = """\
Many LoRA adapters, many tenants, one base model.

* **OpenAI-compatible** (`/v1/...`, tenant key): models, completions and chat completions,
  streamed as server-sent events with `stream: true`. `model` is the base model's name or one
  of your adapters, `name` (newest version) or `name:version`.
* **Adapters** (`/v1/adapters`, tenant key): upload PEFT adapters (safetensors only), list,
  delete.
* **Admin** (`/admin/v1/...`, admin key): tenants and quotas, keys, all adapters, the engine,
  usage. The same in a browser: the dashboard at `/dashboard`.

Authenticate with `Authorization: Bearer <key>`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await open_state(settings)
        app.state.loraplex = state
        try:
            async with app.state.dashboard.sampling(state):
                yield
        finally:
            await asyncio.to_thread(close_state, state)

    app = FastAPI(title="loraplex", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    install_error_handlers(app)
    for router in ALL_ROUTERS:
        app.include_router(router)
    dashboard.mount_dashboard(app)
    uploads = re.compile(f"{UPLOAD_PATHS.pattern}|{dashboard.UPLOAD_PATHS.pattern}")
    app.add_middleware(
        UploadSizeLimitMiddleware, max_bytes=settings.max_upload_bytes, paths=uploads
    )
    app.add_middleware(HTTPMetricsMiddleware)
    return app
