"""Everything the service holds for its lifetime, built at start-up and closed at shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from loraplex.adapter_format.peft import BaseModelShape
from loraplex.adapters.cache import AdapterCache
from loraplex.adapters.object_store import ObjectStore, open_object_store
from loraplex.engine.async_engine import AsyncEngineArgs, AsyncLLMEngine
from loraplex.platform.adapter_loading import AdapterLoader
from loraplex.platform.admission import AdmissionControl
from loraplex.platform.db import create_db_engine, create_session_factory
from loraplex.platform.metrics import PlatformMetrics
from loraplex.platform.quotas import TenantRateLimiter
from loraplex.platform.settings import Settings

logger = logging.getLogger(__name__)

# Tokens that end an assistant turn in common chat templates; those the tokenizer knows are
# added to every chat request's stop tokens (the model's EOS alone would run past the turn).
TURN_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


@dataclass
class AppState:
    settings: Settings
    engine: AsyncLLMEngine
    served_model_name: str
    model_path: str
    base_shape: BaseModelShape
    max_model_len: int
    vocab_size: int
    chat_stop_token_ids: list[int]
    db_engine: Engine
    sessions: sessionmaker[Session]
    store: ObjectStore
    adapter_cache: AdapterCache
    adapters: AdapterLoader
    limiter: TenantRateLimiter
    admission: AdmissionControl
    metrics: PlatformMetrics
    started_at: float = field(default_factory=time.time)


def resolve_model_path(settings: Settings) -> str:
    """The configured model folder, or the tiny Llama made locally when none is configured."""
    if settings.model:
        return settings.model
    from loraplex.modelgen import cached_model

    return str(cached_model("tiny", "llama"))


def default_served_name(settings: Settings, model_path: str) -> str:
    if settings.served_model_name:
        return settings.served_model_name
    return "tiny-llama" if not settings.model else Path(model_path).resolve().name


def engine_args(settings: Settings, model_path: str) -> AsyncEngineArgs:
    return AsyncEngineArgs(
        model=model_path,
        dtype=settings.dtype,
        device=settings.device,
        seed=settings.seed,
        max_model_len=settings.max_model_len,
        tensor_parallel_size=settings.tensor_parallel_size,
        quantization=settings.quantization,
        kv_cache_dtype=settings.kv_cache_dtype,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_num_seqs=settings.max_num_seqs,
        async_scheduling=settings.async_scheduling,
        enable_lora=True,
        max_loras=settings.max_loras,
        max_lora_rank=settings.max_lora_rank,
        max_cpu_loras=settings.max_cpu_loras,
        disable_log_requests=not settings.log_requests,
    )


def _turn_end_ids(tokenizer: object) -> list[int]:
    vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
    return sorted({vocab[token] for token in TURN_END_TOKENS if token in vocab})


async def open_state(settings: Settings) -> AppState:
    """Connect the database and object store and load the model (off the event loop)."""
    model_path = resolve_model_path(settings)
    engine = await asyncio.to_thread(
        AsyncLLMEngine.from_engine_args, engine_args(settings, model_path)
    )
    db_engine = create_db_engine(settings.database_url)
    store = open_object_store(
        settings.object_store_url,
        endpoint_url=settings.object_store_endpoint_url,
        region=settings.object_store_region,
    )
    # Only the cache's disk tier serves requests: the engine keeps its own CPU copies, so the
    # cache's CPU tier is sized to one entry and never filled by the serving path.
    assert settings.adapter_cache_dir is not None
    adapter_cache = AdapterCache(
        store,
        disk_dir=settings.adapter_cache_dir,
        disk_max_bytes=settings.adapter_disk_cache_bytes,
        cpu_max_entries=1,
        max_rank=settings.max_lora_rank,
    )
    metrics = PlatformMetrics()
    llm_engine = engine.engine
    hf_config = llm_engine.config.model.hf_config
    return AppState(
        settings=settings,
        engine=engine,
        served_model_name=default_served_name(settings, model_path),
        model_path=model_path,
        base_shape=BaseModelShape.from_config(hf_config.to_dict()),
        max_model_len=llm_engine.max_model_len,
        vocab_size=llm_engine.config.model.vocab_size,
        chat_stop_token_ids=_turn_end_ids(engine.tokenizer),
        db_engine=db_engine,
        sessions=create_session_factory(db_engine),
        store=store,
        adapter_cache=adapter_cache,
        adapters=AdapterLoader(adapter_cache, engine, metrics),
        limiter=TenantRateLimiter(),
        admission=AdmissionControl(
            running=settings.max_num_seqs,
            waiting=settings.max_waiting_requests,
            retry_after=settings.overload_retry_after_seconds,
        ),
        metrics=metrics,
    )


def close_state(state: AppState) -> None:
    state.engine.shutdown()
    state.adapter_cache.close()
    state.db_engine.dispose()
