"""Admin: every tenant's adapters."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from loraplex.adapters.registry import list_adapter_versions, list_adapters
from loraplex.adapters.tenants import get_tenant, list_tenants
from loraplex.platform.deps import SessionDep, require_admin
from loraplex.platform.schemas import AdapterOut, DatabaseId, ListOf, TenantAdapterOut

router = APIRouter(
    prefix="/admin/v1/adapters", tags=["Admin"], dependencies=[Depends(require_admin)]
)


@router.get("", response_model=ListOf[TenantAdapterOut], summary="List adapters of all tenants")
def list_all(
    session: SessionDep,
    tenant_id: Annotated[DatabaseId | None, Query(description="only this tenant's")] = None,
) -> ListOf[TenantAdapterOut]:
    tenants = (
        [get_tenant(session=session, tenant_id=tenant_id)]
        if tenant_id is not None
        else list_tenants(session=session)
    )
    found = []
    for tenant in tenants:
        for adapter in list_adapters(session=session, tenant_id=tenant.id):
            versions = list_adapter_versions(session=session, adapter_id=adapter.id)
            found.append(
                TenantAdapterOut(
                    tenant_id=tenant.id,
                    tenant_name=tenant.name,
                    **AdapterOut.from_row(adapter, versions).model_dump(),
                )
            )
    return ListOf[TenantAdapterOut](data=found)
