"""`GET /health`: 200 while the engine's step loop runs, 503 once it has died."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from loraplex.platform.deps import StateDep

router = APIRouter(tags=["Operations"])


@router.get("/health", summary="Liveness of the engine (no key needed)")
async def health(state: StateDep) -> JSONResponse:
    if state.engine.is_healthy:
        return JSONResponse({"status": "ok", "model": state.served_model_name})
    return JSONResponse({"status": "engine_dead", "model": state.served_model_name}, 503)
