"""Admin: the engine's state (configuration, batch, KV cache, LoRA slots and their adapters)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from loraplex.platform.deps import StateDep, require_admin
from loraplex.platform.engine_view import describe_engine
from loraplex.platform.schemas import EngineOut

router = APIRouter(prefix="/admin/v1/engine", tags=["Admin"], dependencies=[Depends(require_admin)])


@router.get("", response_model=EngineOut, summary="Engine state: batch, KV cache, LoRA slots")
async def engine_state(state: StateDep) -> EngineOut:
    return await describe_engine(state)
