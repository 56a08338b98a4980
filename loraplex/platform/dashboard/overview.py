"""The overview page: the base model and engine settings, the GPU LoRA slots, KV cache, batch,
adapter loads and evictions, and live charts of tokens/s and requests/s; plus `live.json`, the
same live parts as data and as markup for the page's script to swap in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loraplex.adapters.listing import VersionLabel, describe_versions
from loraplex.platform.dashboard.auth import PREFIX, AdminDep
from loraplex.platform.dashboard.charts import LineChart, line_chart
from loraplex.platform.dashboard.dashboard_state import DashboardDep, DashboardState
from loraplex.platform.dashboard.live import Window
from loraplex.platform.dashboard.templating import SECURITY_HEADERS, render_fragment
from loraplex.platform.deps import StateDep
from loraplex.platform.engine_view import describe_engine
from loraplex.platform.schemas import EngineOut, SlotOut
from loraplex.platform.state import AppState

router = APIRouter(prefix=PREFIX, include_in_schema=False)
LIVE_REFRESH_MS = 2000
LOAD_TIERS = ("disk", "cpu")


@dataclass(frozen=True)
class SlotView:
    slot: SlotOut
    label: VersionLabel | None  # None for an empty slot (or a version deleted meanwhile)

    @property
    def reference(self) -> str | None:
        """`tenant/name:vN`, or the engine's own name when the registry no longer has it."""
        if self.label is not None:
            return self.label.reference
        return self.slot.adapter


@dataclass(frozen=True)
class LiveView:
    engine: EngineOut
    slots: list[SlotView]
    loads: dict[str, int]  # adapter loads by tier ("disk", "cpu", "gpu") and "evictions"
    window: Window
    tokens_chart: LineChart
    requests_chart: LineChart


def adapter_loads(state: AppState, engine: EngineOut) -> dict[str, int]:
    """Loads into each tier since start, as /metrics reports them."""
    registry = state.metrics.registry
    loads = {
        tier: int(registry.get_sample_value("loraplex_adapter_loads_total", {"tier": tier}) or 0)
        for tier in LOAD_TIERS
    }
    loads["gpu"] = engine.slot_loads
    loads["evictions"] = engine.slot_evictions
    return loads


def _labels(state: AppState, version_ids: list[int]) -> dict[int, VersionLabel]:
    with state.sessions() as session:
        return describe_versions(session=session, version_ids=version_ids)


async def live_view(state: AppState, dashboard: DashboardState) -> LiveView:
    engine = await describe_engine(state)
    used = [s.adapter_version_id for s in engine.slots if s.adapter_version_id is not None]
    labels = await run_in_threadpool(_labels, state, used)
    window = dashboard.history.window()
    points = window.points
    return LiveView(
        engine=engine,
        slots=[SlotView(slot, labels.get(slot.adapter_version_id)) for slot in engine.slots],
        loads=adapter_loads(state, engine),
        window=window,
        tokens_chart=line_chart(
            [(p.age_seconds, p.tokens_per_second) for p in points],
            window_seconds=window.seconds,
            total=window.tokens,
            unit="tokens/s",
        ),
        requests_chart=line_chart(
            [(p.age_seconds, p.requests_per_second) for p in points],
            window_seconds=window.seconds,
            total=window.requests,
            unit="requests/s",
        ),
    )


def _fragments(dashboard: DashboardState, live: LiveView) -> dict[str, str]:
    templates = dashboard.templates
    return {
        "figures": render_fragment(templates, "_engine_figures.html", live=live),
        "slots": render_fragment(templates, "_slots.html", live=live),
        "tokens": render_fragment(
            templates, "_line_chart.html", chart=live.tokens_chart, name="tokens"
        ),
        "requests": render_fragment(
            templates, "_line_chart.html", chart=live.requests_chart, name="requests"
        ),
    }


def _live_data(live: LiveView) -> dict[str, Any]:
    window = live.window
    return {
        "engine": live.engine.model_dump(mode="json"),
        "slots": [
            {
                "slot": view.slot.slot,
                "adapter": view.reference,
                "adapter_version_id": view.slot.adapter_version_id,
                "pinned": view.slot.pinned,
                "idle_seconds": view.slot.idle_seconds,
            }
            for view in live.slots
        ],
        "adapter_loads": live.loads,
        "history": {
            "window_seconds": window.seconds,
            "tokens": window.tokens,
            "requests": window.requests,
            "points": [
                {
                    "age_seconds": round(point.age_seconds, 3),
                    "tokens_per_second": point.tokens_per_second,
                    "requests_per_second": point.requests_per_second,
                    "running": point.running,
                    "waiting": point.waiting,
                    "kv_cache_usage": point.kv_cache_usage,
                }
                for point in window.points
            ],
        },
    }


@router.get("", name="dashboard_overview")
async def overview(
    request: Request, admin: AdminDep, state: StateDep, dashboard: DashboardDep
) -> Response:
    live = await live_view(state, dashboard)
    return dashboard.page(
        request,
        "overview.html",
        admin=admin,
        live=live,
        refresh_ms=LIVE_REFRESH_MS,
    )


@router.get("/live.json", name="dashboard_live")
async def live(_admin: AdminDep, state: StateDep, dashboard: DashboardDep) -> JSONResponse:
    view = await live_view(state, dashboard)
    body = _live_data(view) | {"fragments": _fragments(dashboard, view)}
    return JSONResponse(body, headers=SECURITY_HEADERS)
