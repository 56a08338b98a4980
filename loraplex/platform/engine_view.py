"""The engine as the admin API and the dashboard show it: its resolved configuration, batch,
KV cache and LoRA slots, from one snapshot taken between steps."""

from __future__ import annotations

from loraplex.config import EngineConfig
from loraplex.platform.engine_state import EngineSnapshot, snapshot_engine
from loraplex.platform.schemas import EngineConfigOut, EngineOut, SlotOut
from loraplex.platform.state import AppState


def _dtype_name(dtype: object) -> str:
    return str(dtype).removeprefix("torch.")


def describe_config(state: AppState) -> EngineConfigOut:
    config: EngineConfig = state.engine.engine.config
    lora = config.lora
    return EngineConfigOut(
        model_path=state.model_path,
        dtype=_dtype_name(config.model.dtype),
        device=str(config.model.device),
        quantization=config.model.quantization,
        kv_cache_dtype=config.cache.cache_dtype,
        block_size=config.cache.block_size,
        tensor_parallel_size=config.parallel.tensor_parallel_size,
        max_num_seqs=config.scheduler.max_num_seqs,
        max_num_batched_tokens=config.scheduler.max_num_batched_tokens,
        async_scheduling=config.scheduler.async_scheduling,
        max_lora_rank=lora.max_lora_rank if lora is not None else 0,
        max_cpu_loras=lora.max_cpu_loras if lora is not None else None,
    )


def engine_out(state: AppState, snapshot: EngineSnapshot) -> EngineOut:
    stats = snapshot.stats
    return EngineOut(
        model=state.served_model_name,
        config=describe_config(state),
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


async def describe_engine(state: AppState) -> EngineOut:
    return engine_out(state, await snapshot_engine(state.engine))
