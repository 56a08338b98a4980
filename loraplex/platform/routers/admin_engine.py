"""Admin: the engine's state (batch, KV cache, LoRA slots and the adapters in them)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from loraplex.platform.deps import StateDep, require_admin
from loraplex.platform.engine_state import snapshot_engine
from loraplex.platform.schemas import EngineOut, SlotOut

router = APIRouter(prefix="/admin/v1/engine", tags=["Admin"], dependencies=[Depends(require_admin)])


@router.get("", response_model=EngineOut, summary="Engine state: batch, KV cache, LoRA slots")
async def engine_state(state: StateDep) -> EngineOut:
    snapshot = await snapshot_engine(state.engine)
    stats = snapshot.stats
    return EngineOut(
        model=state.served_model_name,
        healthy=snapshot.healthy,
        max_model_len=state.max_model_len,
        num_running=stats.num_running,
        num_waiting=stats.num_waiting,
        kv_cache_usage=stats.kv_cache_usage,
        num_kv_blocks=stats.num_kv_blocks,
        num_preemptions=stats.num_preemptions,
        sequences_in_flight=state.admission.in_flight,
        queue_capacity=state.admission.capacity,
        max_loras=snapshot.max_loras,
        slots=[
            SlotOut(
                slot=slot.slot,
                adapter_version_id=slot.adapter_version_id,
                adapter=slot.adapter_name,
                pinned=slot.pinned,
                idle_seconds=slot.idle_seconds,
            )
            for slot in snapshot.slots
        ],
        loaded_adapter_ids=snapshot.loaded_adapter_ids,
        slot_loads=snapshot.slot_loads,
        slot_evictions=snapshot.slot_evictions,
    )
