"""Operations of the admin API that the dashboard performs too, written once for both: listing
tenants and adapters a page at a time, and changing a tenant."""

from __future__ import annotations

from sqlalchemy.orm import Session

from loraplex.adapters.listing import (
    ResultPage,
    search_adapters,
    search_tenants,
    tenant_names,
    versions_by_adapter,
)
from loraplex.adapters.models import Tenant
from loraplex.adapters.tenants import (
    QUOTA_FIELDS,
    get_tenant,
    set_tenant_disabled,
    update_tenant_quotas,
)
from loraplex.platform.schemas import TenantAdapterOut, TenantOut, TenantUpdate


def tenants_page(
    *, session: Session, search: str, limit: int | None, offset: int
) -> ResultPage[TenantOut]:
    found = search_tenants(session=session, search=search, limit=limit, offset=offset)
    return ResultPage([TenantOut.from_row(t) for t in found.items], found.total, limit, offset)


def adapters_page(
    *, session: Session, tenant_id: int | None, search: str, limit: int | None, offset: int
) -> ResultPage[TenantAdapterOut]:
    """Adapters of one tenant or all, with their ready versions, in three queries."""
    if tenant_id is not None:
        get_tenant(session=session, tenant_id=tenant_id)  # 404 for an unknown tenant
    found = search_adapters(
        session=session, tenant_id=tenant_id, search=search, limit=limit, offset=offset
    )
    adapters = found.items
    names = tenant_names(session=session, tenant_ids={a.tenant_id for a in adapters})
    versions = versions_by_adapter(session=session, adapter_ids=[a.id for a in adapters])
    rows = [
        TenantAdapterOut.from_tenant_row(names[a.tenant_id], a, versions[a.id]) for a in adapters
    ]
    return ResultPage(rows, found.total, limit, offset)


def update_tenant(*, session: Session, tenant_id: int, update: TenantUpdate) -> Tenant:
    """Apply the fields that were sent: quotas (None removes a limit), then `disabled`."""
    sent = update.model_dump(exclude_unset=True)
    quotas = {field: sent[field] for field in QUOTA_FIELDS if field in sent}
    tenant = get_tenant(session=session, tenant_id=tenant_id)
    if quotas:
        tenant = update_tenant_quotas(session=session, tenant_id=tenant_id, **quotas)
    disabled = sent.get("disabled")
    if disabled is not None:
        tenant = set_tenant_disabled(session=session, tenant_id=tenant_id, disabled=disabled)
    return tenant
