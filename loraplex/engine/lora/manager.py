"""Where adapters live: CPU memory (an LRU of `max_cpu_loras`) and GPU slots (`max_loras`).

Requests hold a reference to their loaded adapter for their whole life, so evicting one from the
CPU cache or removing it never changes a request that already has it. Slots are keyed by the
adapter object, not its id: a removed-and-re-added id is a different adapter. A slot is reused
for the least recently used adapter that no running sequence needs and nobody pinned.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from loraplex.config import LoRAConfig
from loraplex.engine.layers.lora import SlotWeights
from loraplex.engine.lora.adapter import LoRAAdapter, load_adapter
from loraplex.lora_request import LoRARequest


class LoRAManager:
    def __init__(
        self,
        config: LoRAConfig,
        hf_config: Any,
        dtype: torch.dtype,
        device: torch.device,
        write_slot: Callable[[int, SlotWeights], None],
    ) -> None:
        self.config = config
        self.hf_config = hf_config
        self.dtype = dtype
        self.device = device
        self.write_slot = write_slot  # fills a slot on every tensor-parallel rank
        self.num_slots = config.max_loras
        self.max_cpu = config.max_cpu_loras or config.max_loras
        self._lock = threading.Lock()  # requests are made (and adapters loaded) in any thread
        self._cpu: OrderedDict[int, LoRAAdapter] = OrderedDict()
        self._paths: dict[int, str] = {}
        self._slots: list[LoRAAdapter | None] = [None] * self.num_slots
        self._last_used = [0.0] * self.num_slots
        self.pinned: set[int] = set()
        self.num_loads = 0  # adapters copied into a slot
        self.num_evictions = 0  # slots taken from another adapter
        self._slot_load_seconds = 0.0  # time spent filling slots, of the loads timed so far
        # CUDA events around slot writes whose time is not yet known: waiting for them would
        # also wait for the step in flight (async scheduling) and stall the engine loop.
        self._pending_load_timings: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    # ---- CPU tier -------------------------------------------------------------------------

    def get(self, request: LoRARequest) -> LoRAAdapter:
        """The adapter in CPU memory, loaded from its folder on a miss (ValueError if bad)."""
        with self._lock:
            known = self._paths.get(request.lora_int_id)
            if known is not None and known != request.lora_path:
                raise ValueError(
                    f"lora_int_id {request.lora_int_id} is already used for {known!r}, "
                    f"not {request.lora_path!r}; remove it first or use another id"
                )
            adapter = self._cpu.get(request.lora_int_id)
            if adapter is not None:
                self._cpu.move_to_end(request.lora_int_id)
                return adapter
        adapter = load_adapter(
            request,
            self.hf_config,
            max_rank=self.config.max_lora_rank,
            dtype=self.dtype,
            pin=self.device.type == "cuda",
        )
        with self._lock:
            if self._paths.setdefault(request.lora_int_id, request.lora_path) != request.lora_path:
                raise ValueError(f"lora_int_id {request.lora_int_id} was taken meanwhile")
            adapter = self._cpu.setdefault(request.lora_int_id, adapter)
            self._cpu.move_to_end(request.lora_int_id)
            self._trim_cpu()
            return adapter

    def _trim_cpu(self) -> None:
        while len(self._cpu) > self.max_cpu:
            victim = next((i for i in self._cpu if i not in self.pinned), None)
            if victim is None:
                return
            del self._cpu[victim]

    def add(self, request: LoRARequest) -> bool:
        with self._lock:
            present = request.lora_int_id in self._cpu
        self.get(request)
        return not present

    def remove(self, lora_int_id: int, in_use: set[LoRAAdapter]) -> bool:
        """Forget an adapter; requests that hold it keep it (and its slot) until they finish."""
        with self._lock:
            adapter = self._cpu.pop(lora_int_id, None)
            known = self._paths.pop(lora_int_id, None) is not None
            self.pinned.discard(lora_int_id)
        for slot, held in enumerate(self._slots):
            if held is not None and held.lora_int_id == lora_int_id and held not in in_use:
                self._free_slot(slot)
        return known or adapter is not None

    def list_ids(self) -> set[int]:
        with self._lock:
            return set(self._cpu) | {a.lora_int_id for a in self._slots if a is not None}

    def pin(self, request_or_id: LoRARequest | int, in_use: set[LoRAAdapter]) -> bool:
        """Keep an adapter in a slot for good. Returns False for an unknown id."""
        if isinstance(request_or_id, LoRARequest):
            adapter = self.get(request_or_id)
        else:
            with self._lock:
                adapter = self._cpu.get(request_or_id)
            if adapter is None:
                return False
        pinned_elsewhere = len(self.pinned - {adapter.lora_int_id})
        if pinned_elsewhere >= self.num_slots:
            raise ValueError(f"all {self.num_slots} LoRA slots are pinned already")
        with self._lock:
            self.pinned.add(adapter.lora_int_id)
        if adapter in self._slots or self._has_slot_for(in_use):
            self.activate({adapter}, in_use)
        # else every slot serves a running request; the adapter stays pinned from its next load.
        return True

    # ---- GPU slots ------------------------------------------------------------------------

    def pinned_resident(self) -> set[LoRAAdapter]:
        return {a for a in self._slots if a is not None and a.lora_int_id in self.pinned}

    def activate(
        self, needed: set[LoRAAdapter], in_use: set[LoRAAdapter]
    ) -> dict[LoRAAdapter, int]:
        """Put every needed adapter in a slot; return each one's slot. The scheduler keeps
        len(needed | in_use | pinned) within the slot count, so a victim always exists."""
        now = time.monotonic()
        slots: dict[LoRAAdapter, int] = {}
        for adapter in needed:
            slot = next((i for i, a in enumerate(self._slots) if a is adapter), None)
            if slot is None:
                slot = self._take_slot(needed | in_use)
                self._load(slot, adapter)
            self._last_used[slot] = now
            slots[adapter] = slot
        return slots

    def _evictable(self, keep: set[LoRAAdapter]) -> list[int]:
        return [
            i
            for i, a in enumerate(self._slots)
            if a is None or (a not in keep and a.lora_int_id not in self.pinned)
        ]

    def _has_slot_for(self, keep: set[LoRAAdapter]) -> bool:
        return bool(self._evictable(keep))

    def _take_slot(self, keep: set[LoRAAdapter]) -> int:
        free = [i for i, a in enumerate(self._slots) if a is None]
        if free:
            return free[0]
        candidates = self._evictable(keep)
        if not candidates:
            raise RuntimeError("no LoRA slot can be freed: every slot is in use or pinned")
        slot = min(candidates, key=lambda i: self._last_used[i])
        self.num_evictions += 1
        return slot

    def _load(self, slot: int, adapter: LoRAAdapter) -> None:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self.write_slot(slot, adapter.weights)
            end.record()
            self._pending_load_timings.append((start, end))
        else:
            started = time.perf_counter()
            self.write_slot(slot, adapter.weights)
            self._slot_load_seconds += time.perf_counter() - started
        self._slots[slot] = adapter
        self.num_loads += 1

    @property
    def slot_load_seconds(self) -> float:
        """Total time spent filling slots (on a GPU: of the writes that have completed)."""
        pending = []
        for start, end in self._pending_load_timings:
            if end.query():
                self._slot_load_seconds += start.elapsed_time(end) / 1e3
            else:
                pending.append((start, end))
        self._pending_load_timings = pending
        return self._slot_load_seconds

    def _free_slot(self, slot: int) -> None:
        self._slots[slot] = None
        self._last_used[slot] = 0.0

    def slot_table(self) -> list[tuple[int, LoRAAdapter | None, bool, float]]:
        """(slot, adapter, pinned, last used) for every slot, for dashboards and metrics."""
        return [
            (i, a, a is not None and a.lora_int_id in self.pinned, self._last_used[i])
            for i, a in enumerate(self._slots)
        ]
