"""Tensor parallelism: the driver's executor, its worker processes and their messages."""

from __future__ import annotations

from loraplex.engine.parallel.executor import Executor, create_executor
from loraplex.engine.parallel.workers import TensorParallelError

__all__ = ["Executor", "TensorParallelError", "create_executor"]
