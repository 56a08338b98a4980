"""Admin: a tenant's API keys (create, list without secrets, revoke)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from loraplex.adapters.api_keys import create_api_key, list_api_keys, revoke_api_key
from loraplex.adapters.tenants import get_tenant
from loraplex.platform.deps import SessionDep, require_admin
from loraplex.platform.schemas import DatabaseId, KeyCreate, KeyOut, ListOf, NewKeyOut

router = APIRouter(
    prefix="/admin/v1/tenants/{tenant_id}/keys",
    tags=["Admin"],
    dependencies=[Depends(require_admin)],
)
TenantId = Annotated[DatabaseId, Path(description="the tenant's id")]
KeyId = Annotated[DatabaseId, Path(description="the key's id")]


@router.post(
    "",
    status_code=201,
    response_model=NewKeyOut,
    summary="Create a key for the tenant",
    description="The plaintext `key` is in this response only; it is stored as a hash.",
)
def create(tenant_id: TenantId, session: SessionDep, body: KeyCreate | None = None) -> NewKeyOut:
    created = create_api_key(session=session, tenant_id=tenant_id, name=(body or KeyCreate()).name)
    return NewKeyOut(key=created.plaintext, **KeyOut.from_row(created.record).model_dump())


@router.get("", response_model=ListOf[KeyOut], summary="List the tenant's keys (no secrets)")
def list_all(
    tenant_id: TenantId,
    session: SessionDep,
    include_revoked: Annotated[bool, Query(description="list revoked keys too")] = False,
) -> ListOf[KeyOut]:
    get_tenant(session=session, tenant_id=tenant_id)
    keys = list_api_keys(session=session, tenant_id=tenant_id, include_revoked=include_revoked)
    return ListOf[KeyOut](data=[KeyOut.from_row(k) for k in keys])


@router.delete("/{key_id}", response_model=KeyOut, summary="Revoke a key")
def revoke(tenant_id: TenantId, key_id: KeyId, session: SessionDep) -> KeyOut:
    get_tenant(session=session, tenant_id=tenant_id)
    return KeyOut.from_row(revoke_api_key(session=session, key_id=key_id, tenant_id=tenant_id))
