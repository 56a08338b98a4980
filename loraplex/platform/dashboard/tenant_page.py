"""A tenant's page: status, quotas (editable), API keys, adapters with their versions and where
each is cached, the upload form, and a chart of tokens per hour by adapter.

Forms on this page that fail (quotas, a new key, an upload) render the page again with the
error beside the form and a 4xx status; those that succeed redirect back with a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loraplex.adapters.api_keys import list_api_keys
from loraplex.adapters.errors import NotFoundError
from loraplex.adapters.listing import ResultPage
from loraplex.adapters.tenants import get_tenant
from loraplex.adapters.usage import UsageBucket, aggregate_usage
from loraplex.platform.admin_service import adapters_page, update_tenant
from loraplex.platform.dashboard.auth import PREFIX, AdminDep, read_form
from loraplex.platform.dashboard.cache_tiers import CacheLocator
from loraplex.platform.dashboard.charts import BarChart, stacked_bar_chart
from loraplex.platform.dashboard.dashboard_state import (
    Admin,
    DashboardDep,
    DashboardState,
    PageError,
)
from loraplex.platform.dashboard.forms import QUOTA_LABELS, parse_form
from loraplex.platform.dashboard.pagination import Pager, page_number
from loraplex.platform.deps import StateDep
from loraplex.platform.engine_view import describe_engine
from loraplex.platform.schemas import INT32_MAX, KeyOut, TenantAdapterOut, TenantOut, TenantUpdate
from loraplex.platform.state import AppState

router = APIRouter(prefix=PREFIX, include_in_schema=False)
USAGE_HOURS = 24
MAX_CHART_SERIES = 7  # the busiest adapters; the rest are summed as "other adapters"
BASE_MODEL_SERIES = "base model"


@dataclass(frozen=True)
class FormErrors:
    """What the page shows beside its forms after a failed submission."""

    quotas: dict[str, str] = field(default_factory=dict)
    quota_values: dict[str, str] | None = None
    key: str | None = None
    key_name: str = ""
    upload: str | None = None
    upload_name: str = ""


@dataclass(frozen=True)
class TenantData:
    tenant: TenantOut
    keys: list[KeyOut]
    adapters: ResultPage[TenantAdapterOut]
    usage: list[UsageBucket]
    hours: list[datetime]  # the starts of the hours `usage` covers
    search_error: str | None


def tenant_id_of(raw: str) -> int:
    """A tenant id from the URL; anything that cannot be one is a tenant that does not exist."""
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= INT32_MAX:
        raise PageError(404, f"tenant {raw!r} not found")
    return int(raw)


def usage_hours(now: datetime) -> list[datetime]:
    """The starts of the last USAGE_HOURS hours, the current one last."""
    current = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return [current - timedelta(hours=USAGE_HOURS - 1 - i) for i in range(USAGE_HOURS)]


def usage_chart(buckets: list[UsageBucket], hours: list[datetime]) -> BarChart:
    """Tokens per hour, stacked by adapter: the busiest ones by name, then the others."""
    index = {hour: i for i, hour in enumerate(hours)}
    per_adapter: dict[str, list[float]] = {}
    for bucket in buckets:
        if bucket.start not in index:
            continue
        name = bucket.adapter_name or BASE_MODEL_SERIES
        values = per_adapter.setdefault(name, [0.0] * len(hours))
        values[index[bucket.start]] += bucket.prompt_tokens + bucket.completion_tokens
    ranked = sorted(per_adapter, key=lambda name: (-sum(per_adapter[name]), name))
    series = {name: per_adapter[name] for name in ranked[:MAX_CHART_SERIES]}
    rest = ranked[MAX_CHART_SERIES:]
    if rest:
        series["other adapters"] = [
            sum(per_adapter[name][i] for name in rest) for i in range(len(hours))
        ]
    labels = [hour.strftime("%H:00") for hour in hours]
    return stacked_bar_chart(labels, series, unit="tokens", label_every=4)


def _load(state: AppState, tenant_id: int, search: str, offset: int, size: int) -> TenantData:
    with state.sessions() as session:
        try:
            tenant = TenantOut.from_row(get_tenant(session=session, tenant_id=tenant_id))
        except NotFoundError as exc:
            raise PageError(404, str(exc)) from None
        keys = list_api_keys(session=session, tenant_id=tenant_id, include_revoked=True)
        search_error = None
        try:
            adapters = adapters_page(
                session=session, tenant_id=tenant_id, search=search, limit=size, offset=offset
            )
        except ValueError as exc:
            adapters, search_error = ResultPage([], 0, size, 0), str(exc)
        hours = usage_hours(datetime.now(UTC))
        usage = aggregate_usage(
            session=session,
            start=hours[0],
            end=hours[-1] + timedelta(hours=1),
            bucket=timedelta(hours=1),
            tenant_id=tenant_id,
        )
        return TenantData(
            tenant,
            # Active keys first, newest first within each group.
            sorted(
                (KeyOut.from_row(k) for k in keys),
                key=lambda k: (k.revoked_at is not None, -k.id),
            ),
            adapters,
            usage,
            hours,
            search_error,
        )


async def tenant_page(
    request: Request,
    state: AppState,
    dashboard: DashboardState,
    admin: Admin,
    tenant_id: int,
    *,
    search: str = "",
    page: int = 1,
    errors: FormErrors | None = None,
    status_code: int = 200,
) -> Response:
    path = request.app.url_path_for("dashboard_tenant", tenant_id=str(tenant_id))
    pager = Pager(path, page, 0, search, anchor="adapters")
    data = await run_in_threadpool(_load, state, tenant_id, search, pager.offset, pager.size)
    engine = await describe_engine(state)
    context: dict[str, Any] = {
        "data": data,
        "tenant": data.tenant,
        "pager": Pager(path, page, data.adapters.total, search, anchor="adapters"),
        "locator": CacheLocator(engine, state.adapter_cache.disk.__contains__),
        "chart": usage_chart(data.usage, data.hours),
        "errors": errors or FormErrors(),
        "quota_labels": QUOTA_LABELS,
        "max_upload_bytes": state.settings.max_upload_bytes,
        "max_lora_rank": state.settings.max_lora_rank,
        "base_model": state.served_model_name,
    }
    return dashboard.page(request, "tenant.html", admin=admin, status_code=status_code, **context)


@router.get("/tenants/{tenant_id}", name="dashboard_tenant")
async def show(
    tenant_id: str,
    request: Request,
    admin: AdminDep,
    state: StateDep,
    dashboard: DashboardDep,
    q: Annotated[str, Query(max_length=200)] = "",
    page: Annotated[str | None, Query()] = None,
) -> Response:
    return await tenant_page(
        request,
        state,
        dashboard,
        admin,
        tenant_id_of(tenant_id),
        search=q.strip(),
        page=page_number(page),
    )


@router.post("/tenants/{tenant_id}/quotas", name="dashboard_tenant_quotas")
async def set_quotas(
    tenant_id: str, request: Request, admin: AdminDep, state: StateDep, dashboard: DashboardDep
) -> Response:
    number = tenant_id_of(tenant_id)
    form = await read_form(request, admin)
    result = parse_form(form, TenantUpdate)
    if result.errors:
        errors = FormErrors(quotas=result.errors, quota_values=result.values)
        return await tenant_page(
            request, state, dashboard, admin, number, errors=errors, status_code=400
        )
    assert isinstance(result.model, TenantUpdate)
    update = result.model

    def apply() -> TenantOut:
        with state.sessions() as session:
            return TenantOut.from_row(
                update_tenant(session=session, tenant_id=number, update=update)
            )

    try:
        tenant = await run_in_threadpool(apply)
    except NotFoundError as exc:
        raise PageError(404, str(exc)) from None
    admin.session.flash("success", f"Quotas of {tenant.name} saved.")
    target = request.app.url_path_for("dashboard_tenant", tenant_id=tenant_id)
    return RedirectResponse(target, status_code=303)
