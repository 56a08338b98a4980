"""One router per resource; `ALL_ROUTERS` is what the app mounts."""

from __future__ import annotations

from loraplex.platform.routers import (
    adapters,
    admin_adapters,
    admin_engine,
    admin_keys,
    admin_tenants,
    admin_usage,
    health,
    metrics,
    models,
    openai_chat,
    openai_completions,
)

ALL_ROUTERS = [
    models.router,
    openai_completions.router,
    openai_chat.router,
    adapters.router,
    admin_tenants.router,
    admin_keys.router,
    admin_adapters.router,
    admin_engine.router,
    admin_usage.router,
    health.router,
    metrics.router,
]
