"""`GET /metrics`: Prometheus exposition (no key needed, like vLLM's; bind the server to a
private address or put it behind a proxy when the per-tenant figures must stay private)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from loraplex.platform.deps import StateDep
from loraplex.platform.engine_state import snapshot_engine

router = APIRouter(tags=["Operations"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: StateDep) -> Response:
    snapshot = await snapshot_engine(state.engine)
    return Response(state.metrics.render(snapshot), media_type=CONTENT_TYPE_LATEST)
