"""Tensor parallelism across processes, one rank per GPU (or per process on CPU), as vLLM does.

The driver (this process, rank 0) keeps the scheduler and the sampler and computes its own shard;
ranks 1 .. N-1 are spawned worker processes. All ranks join one torch.distributed process group
(NCCL on CUDA, gloo on CPU) that the layers' collectives use. Each step the driver prepares the
model input, sends the workers its sizes through their pipes and broadcasts its integer tensors;
then every rank runs the forward pass and rank 0 receives the gathered logits. A LoRA slot load
broadcasts the adapter's full tensors once and each rank keeps its shard.

Any failure during a step (a dead worker, a failed collective) stops all workers and leaves the
engine dead: every later call raises `TensorParallelError`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from loraplex.config import EngineConfig
from loraplex.engine.layers.lora import SlotWeights, write_lora_slot
from loraplex.engine.model_runner import ModelRunner
from loraplex.engine.parallel.executor import Executor
from loraplex.engine.parallel.messages import pack_lora_slot, pack_step
from loraplex.engine.parallel.workers import TensorParallelError, WorkerGroup
from loraplex.engine.scheduler import ScheduledBatch

logger = logging.getLogger(__name__)


class TensorParallelExecutor(Executor):
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._lock = threading.Lock()  # one command at a time reaches the workers, in order
        self.workers = WorkerGroup(config)  # stops its processes itself if it fails
        try:
            # Every worker builds its shard at the same time; loading ends with collectives.
            self.runner = ModelRunner(config, rank=0)
        except (ValueError, KeyboardInterrupt) as exc:
            self.workers.failure(exc)
            raise
        except Exception as exc:
            raise self.workers.failure(exc) from exc
        logger.info(
            "tensor parallelism over %d ranks: workers %s",
            config.parallel.tensor_parallel_size,
            self.workers.pids,
        )

    def execute(
        self,
        batch: ScheduledBatch,
        lora_slots: dict | None = None,
        pending_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        with self._command():
            # The pending ids are filled in on this rank before the step is broadcast.
            model_input = self.runner.prepare(batch, lora_slots, pending_tokens)
            header, payload = pack_step(model_input)
            self.workers.send(header)
            torch.distributed.broadcast(payload, src=0)
            return self.runner.run(model_input)

    def write_lora_slot(self, slot: int, weights: SlotWeights) -> None:
        with self._command():
            header, payload = pack_lora_slot(slot, weights, self.runner.device)
            self.workers.send(header)
            if payload.numel():
                torch.distributed.broadcast(payload, src=0)
            write_lora_slot(self.runner.lora_layers, slot, weights)

    @contextmanager
    def _command(self) -> Iterator[None]:
        """One command to all ranks, in order. A failure may leave workers stuck in a
        collective, so it stops everything and the engine stays dead."""
        with self._lock:
            try:
                self.workers.check()
                yield
            except TensorParallelError:
                self.shutdown()
                raise
            except Exception as exc:
                raise self.workers.failure(exc) from exc
            except BaseException as exc:  # KeyboardInterrupt and the like stay themselves
                self.workers.failure(exc)
                raise

    def shutdown(self) -> None:
        """Stop the workers and leave the process group; idempotent."""
        self.workers.stop()
