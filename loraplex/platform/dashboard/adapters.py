"""The adapters page: every tenant's adapters a page at a time, searchable by adapter or tenant
name (`tenant/adapter` for both), each version with its status, rank, size and where it is
cached now."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from loraplex.adapters.listing import ResultPage
from loraplex.platform.admin_service import adapters_page
from loraplex.platform.dashboard.auth import PREFIX, AdminDep
from loraplex.platform.dashboard.cache_tiers import CacheLocator
from loraplex.platform.dashboard.dashboard_state import DashboardDep
from loraplex.platform.dashboard.pagination import Pager, page_number
from loraplex.platform.deps import StateDep
from loraplex.platform.engine_view import describe_engine
from loraplex.platform.schemas import TenantAdapterOut
from loraplex.platform.state import AppState

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _load(
    state: AppState, search: str, offset: int, size: int
) -> tuple[ResultPage[TenantAdapterOut], str | None]:
    with state.sessions() as session:
        try:
            found = adapters_page(
                session=session, tenant_id=None, search=search, limit=size, offset=offset
            )
        except ValueError as exc:
            return ResultPage([], 0, size, 0), str(exc)
        return found, None


@router.get("/adapters", name="dashboard_adapters")
async def adapters(
    request: Request,
    admin: AdminDep,
    state: StateDep,
    dashboard: DashboardDep,
    q: Annotated[str, Query(max_length=200)] = "",
    page: Annotated[str | None, Query()] = None,
) -> Response:
    search = q.strip()
    path = request.app.url_path_for("dashboard_adapters")
    pager = Pager(path, page_number(page), 0, search)
    found, search_error = await run_in_threadpool(_load, state, search, pager.offset, pager.size)
    engine = await describe_engine(state)
    return dashboard.page(
        request,
        "adapters.html",
        admin=admin,
        found=found,
        search_error=search_error,
        pager=Pager(path, pager.page, found.total, search),
        locator=CacheLocator(engine, state.adapter_cache.disk.__contains__),
        engine=engine,
    )
