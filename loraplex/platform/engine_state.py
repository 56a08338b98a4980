"""A consistent picture of the engine: batch counts, KV usage, LoRA slots and their adapters.

Slot tables change inside the step loop, so they are read on the engine thread between steps
(`call_engine`); a dead engine answers with its last counters and no slots.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from loraplex.engine.async_engine import AsyncLLMEngine, EngineDeadError
from loraplex.engine.llm_engine import EngineStats, LLMEngine


@dataclass(frozen=True)
class SlotInfo:
    slot: int
    adapter_version_id: int | None  # the engine's lora_int_id: the registry's version id
    adapter_name: str | None  # "tenant_id/name:vN" as the platform named it
    pinned: bool
    idle_seconds: float | None  # since the slot last served a batch; None when empty


@dataclass(frozen=True)
class EngineSnapshot:
    healthy: bool
    stats: EngineStats
    max_loras: int
    slots: list[SlotInfo]
    loaded_adapter_ids: list[int]  # in the engine's CPU memory or a slot
    slot_loads: int  # adapters copied into a slot since start
    slot_evictions: int  # slots taken from another adapter since start
    slot_load_seconds: float = 0.0  # time spent filling slots since start

    @property
    def slots_used(self) -> int:
        return sum(slot.adapter_version_id is not None for slot in self.slots)


def _read(engine: LLMEngine) -> EngineSnapshot:
    manager = engine.lora_manager
    stats = engine.stats()
    if manager is None:
        return EngineSnapshot(True, stats, 0, [], [], 0, 0)
    now = time.monotonic()
    slots = [
        SlotInfo(
            slot=index,
            adapter_version_id=adapter.lora_int_id if adapter is not None else None,
            adapter_name=adapter.name if adapter is not None else None,
            pinned=pinned,
            idle_seconds=round(now - last_used, 3) if adapter is not None and last_used else None,
        )
        for index, adapter, pinned, last_used in manager.slot_table()
    ]
    return EngineSnapshot(
        healthy=True,
        stats=stats,
        max_loras=manager.num_slots,
        slots=slots,
        loaded_adapter_ids=sorted(manager.list_ids()),
        slot_loads=manager.num_loads,
        slot_evictions=manager.num_evictions,
        slot_load_seconds=manager.slot_load_seconds,
    )


async def snapshot_engine(engine: AsyncLLMEngine) -> EngineSnapshot:
    try:
        return await engine.call_engine(_read)
    except EngineDeadError:
        return EngineSnapshot(False, engine.stats(), 0, [], [], 0, 0)
