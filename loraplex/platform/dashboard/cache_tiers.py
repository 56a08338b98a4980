"""Where an adapter version is cached right now: in a GPU slot, the engine's CPU memory, the
local disk tier, or only in the object store. Read from one engine snapshot (the admin API's
`EngineOut`) and the disk cache's index."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from loraplex.platform.schemas import EngineOut

TIER_LABELS = {
    "gpu": "GPU slot",
    "cpu": "CPU memory",
    "disk": "local disk",
    "store": "object store only",
}


@dataclass(frozen=True)
class Placement:
    tier: str  # "gpu", "cpu", "disk" or "store": the fastest tier holding the version
    slot: int | None  # the GPU slot, for tier "gpu"

    @property
    def label(self) -> str:
        if self.tier == "gpu":
            return f"GPU slot {self.slot}"
        return TIER_LABELS[self.tier]


class CacheLocator:
    def __init__(self, engine: EngineOut, on_disk: Callable[[int], bool]) -> None:
        self._slots = {
            slot.adapter_version_id: slot.slot
            for slot in engine.slots
            if slot.adapter_version_id is not None
        }
        self._in_cpu = set(engine.loaded_adapter_ids)
        self._on_disk = on_disk

    def locate(self, version_id: int) -> Placement:
        slot = self._slots.get(version_id)
        if slot is not None:
            return Placement("gpu", slot)
        if version_id in self._in_cpu:
            return Placement("cpu", None)
        if self._on_disk(version_id):
            return Placement("disk", None)
        return Placement("store", None)
