"""Admin: every tenant's adapters, searchable by name and a page at a time."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from loraplex.adapters.listing import MAX_OFFSET, MAX_PAGE_SIZE
from loraplex.platform.admin_service import adapters_page
from loraplex.platform.deps import SessionDep, require_admin
from loraplex.platform.schemas import DatabaseId, ListOf, SearchText, TenantAdapterOut

router = APIRouter(
    prefix="/admin/v1/adapters", tags=["Admin"], dependencies=[Depends(require_admin)]
)


@router.get("", response_model=ListOf[TenantAdapterOut], summary="List adapters of all tenants")
def list_all(
    session: SessionDep,
    tenant_id: Annotated[DatabaseId | None, Query(description="only this tenant's")] = None,
    search: Annotated[
        SearchText,
        Query(description="adapter or tenant names containing this; `tenant/name` for both"),
    ] = "",
    limit: Annotated[int | None, Query(ge=1, le=MAX_PAGE_SIZE, description="default: all")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ListOf[TenantAdapterOut]:
    page = adapters_page(
        session=session, tenant_id=tenant_id, search=search, limit=limit, offset=offset
    )
    return ListOf[TenantAdapterOut](data=page.items)
