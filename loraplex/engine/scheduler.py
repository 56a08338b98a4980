"""Continuous batching with chunked prefill and preemption by recompute.

Each step has a token budget (`max_num_batched_tokens`). Running sequences are served first, so
decodes are never stalled by a long prompt; waiting sequences then fill what is left of the
budget, FCFS, a prompt taking as many steps (chunks) as it needs. When the cache runs out of
blocks, the most recently admitted running sequence is preempted: its blocks are freed and it
goes back to the front of the queue, to recompute its prompt and outputs later.

With LoRA, the running sequences use at most `max_loras` distinct adapters (pinned ones
count too), so every batch fits in the GPU slots. A waiting request whose adapter does not fit
waits; while it does, no other request may bring in a new adapter (it would be first in line
for the slot that frees up), but base-model requests keep being admitted.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loraplex.config import SchedulerConfig
from loraplex.engine.block_manager import BlockManager
from loraplex.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)  # in batch order
    num_new_tokens: list[int] = field(default_factory=list)  # tokens each computes this step
    num_preempted: int = 0  # sequences sent back to the queue this step

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        block_manager: BlockManager,
        max_loras: int = 0,
        reserved_loras: Callable[[], set[Any]] = set,
    ) -> None:
        self.config = config
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0  # since start, for metrics and tests
        self.max_loras = max_loras
        self.running_loras: Counter[Any] = Counter()  # adapter -> running sequences using it
        self._reserved_loras = reserved_loras  # adapters that hold a slot regardless (pinned)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            num_new = min(seq.num_uncomputed_tokens, budget)
            if not self._make_room(seq, num_new, batch):
                break  # seq itself was preempted; everything after it already was
            self.block_manager.allocate(seq, num_new)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
            index += 1

        # Admitting new work right after a preemption would only cause another one.
        if not batch.num_preempted:
            self._admit(batch, budget)
        return batch

    def _admit(self, batch: ScheduledBatch, budget: int) -> None:
        admitted: list[Sequence] = []
        adapter_blocked = False
        reserved = self._reserved_loras()  # pinned: resident for good, so never in the way
        for seq in self.waiting:
            if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
                break
            adapter = seq.request.lora_adapter
            if (
                adapter is not None
                and adapter not in reserved
                and (adapter_blocked or not self._adapter_fits(adapter, reserved))
            ):
                adapter_blocked = True
                continue
            num_new = min(seq.num_uncomputed_tokens, budget)
            if not self.block_manager.can_allocate(seq, num_new):
                break
            self.block_manager.allocate(seq, num_new)
            self._start_running(seq)
            admitted.append(seq)
            batch.seqs.append(seq)
            batch.num_new_tokens.append(num_new)
            budget -= num_new
        for seq in admitted:
            self.waiting.remove(seq)

    def _adapter_fits(self, adapter: Any, reserved: set[Any]) -> bool:
        if adapter in self.running_loras:
            return True
        active = set(self.running_loras) | reserved
        return len(active | {adapter}) <= self.max_loras

    def _start_running(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)
        if seq.request.lora_adapter is not None:
            self.running_loras[seq.request.lora_adapter] += 1

    def _stop_running(self, seq: Sequence) -> None:
        self.running.remove(seq)
        adapter = seq.request.lora_adapter
        if adapter is not None:
            self.running_loras[adapter] -= 1
            if not self.running_loras[adapter]:
                del self.running_loras[adapter]

    def _make_room(self, seq: Sequence, num_new: int, batch: ScheduledBatch) -> bool:
        """Preempt from the back of the running list until `seq` fits; False if seq went."""
        while not self.block_manager.can_allocate(seq, num_new):
            victim = self.running[-1]
            self._stop_running(victim)
            self._preempt(victim)
            batch.num_preempted += 1
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.num_preemptions += 1
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """Release a finished or aborted sequence wherever it is."""
        if seq in self.running:
            self._stop_running(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
