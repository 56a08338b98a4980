"""loraplex: many LoRA adapters, many tenants, one base model, one GPU engine."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Imported lazily so that `import loraplex` (e.g. by the CLI) does not load torch.
_EXPORTS = {
    "LLM": "loraplex.engine.llm",
    "EngineArgs": "loraplex.engine.args",
    "LLMEngine": "loraplex.engine.llm_engine",
    "AsyncEngineArgs": "loraplex.engine.async_engine",
    "AsyncLLMEngine": "loraplex.engine.async_engine",
    "SamplingParams": "loraplex.sampling_params",
    "RequestOutputKind": "loraplex.sampling_params",
    "LoRARequest": "loraplex.lora_request",
    "RequestOutput": "loraplex.outputs",
    "CompletionOutput": "loraplex.outputs",
}

__all__ = [
    "LLM",
    "AsyncEngineArgs",
    "AsyncLLMEngine",
    "CompletionOutput",
    "EngineArgs",
    "LLMEngine",
    "LoRARequest",
    "RequestOutput",
    "RequestOutputKind",
    "SamplingParams",
    "random_uuid",
]

if TYPE_CHECKING:
    from loraplex.engine.args import EngineArgs
    from loraplex.engine.async_engine import AsyncEngineArgs, AsyncLLMEngine
    from loraplex.engine.llm import LLM
    from loraplex.engine.llm_engine import LLMEngine
    from loraplex.lora_request import LoRARequest
    from loraplex.outputs import CompletionOutput, RequestOutput
    from loraplex.sampling_params import RequestOutputKind, SamplingParams


def random_uuid() -> str:
    return uuid.uuid4().hex


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'loraplex' has no attribute {name!r}")
