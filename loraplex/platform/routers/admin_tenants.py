"""Admin: tenants (create, list, get, change quotas, disable or enable)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from loraplex.adapters.tenants import (
    QUOTA_FIELDS,
    create_tenant,
    get_tenant,
    list_tenants,
    set_tenant_disabled,
    update_tenant_quotas,
)
from loraplex.platform.deps import SessionDep, require_admin
from loraplex.platform.schemas import DatabaseId, ListOf, TenantCreate, TenantOut, TenantUpdate

router = APIRouter(
    prefix="/admin/v1/tenants", tags=["Admin"], dependencies=[Depends(require_admin)]
)
TenantId = Annotated[DatabaseId, Path(description="the tenant's id")]


@router.post("", status_code=201, response_model=TenantOut, summary="Create a tenant")
def create(body: TenantCreate, session: SessionDep) -> TenantOut:
    tenant = create_tenant(session=session, **body.model_dump())
    return TenantOut.from_row(tenant)


@router.get("", response_model=ListOf[TenantOut], summary="List tenants")
def list_all(session: SessionDep) -> ListOf[TenantOut]:
    return ListOf[TenantOut](data=[TenantOut.from_row(t) for t in list_tenants(session=session)])


@router.get("/{tenant_id}", response_model=TenantOut, summary="Get a tenant")
def get(tenant_id: TenantId, session: SessionDep) -> TenantOut:
    return TenantOut.from_row(get_tenant(session=session, tenant_id=tenant_id))


@router.patch(
    "/{tenant_id}",
    response_model=TenantOut,
    summary="Change quotas, or disable / enable a tenant",
    description="Fields left out are unchanged; a quota sent as null removes the limit. A "
    "disabled tenant's keys stop authenticating until it is enabled again.",
)
def update(tenant_id: TenantId, body: TenantUpdate, session: SessionDep) -> TenantOut:
    sent = body.model_dump(exclude_unset=True)
    quotas = {field: sent[field] for field in QUOTA_FIELDS if field in sent}
    tenant = get_tenant(session=session, tenant_id=tenant_id)
    if quotas:
        tenant = update_tenant_quotas(session=session, tenant_id=tenant_id, **quotas)
    disabled = sent.get("disabled")
    if disabled is not None:
        tenant = set_tenant_disabled(session=session, tenant_id=tenant_id, disabled=disabled)
    return TenantOut.from_row(tenant)
