"""Repository functions for tenants. Each mutating function commits its own transaction."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from loraplex.adapters.errors import ConflictError, NotFoundError
from loraplex.adapters.models import Tenant
from loraplex.adapters.registry import validate_name

QUOTA_FIELDS = ("max_adapters", "requests_per_minute", "tokens_per_minute", "max_upload_bytes")


def _check_quota(field: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive integer or None, got {value!r}")
    return value


def create_tenant(
    *,
    session: Session,
    name: str,
    max_adapters: int | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    max_upload_bytes: int | None = None,
) -> Tenant:
    """Create a tenant; quotas left None impose no tenant-specific limit."""
    tenant = Tenant(
        name=validate_name(name, kind="tenant"),
        max_adapters=_check_quota("max_adapters", max_adapters),
        requests_per_minute=_check_quota("requests_per_minute", requests_per_minute),
        tokens_per_minute=_check_quota("tokens_per_minute", tokens_per_minute),
        max_upload_bytes=_check_quota("max_upload_bytes", max_upload_bytes),
    )
    session.add(tenant)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise ConflictError(f"tenant {name!r} already exists") from exc
    return tenant


def get_tenant(*, session: Session, tenant_id: int) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFoundError(f"tenant {tenant_id} not found")
    return tenant


def get_tenant_by_name(*, session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise NotFoundError(f"tenant {name!r} not found")
    return tenant


def list_tenants(*, session: Session, include_disabled: bool = True) -> list[Tenant]:
    query = select(Tenant).order_by(Tenant.id)
    if not include_disabled:
        query = query.where(Tenant.disabled.is_(False))
    return list(session.scalars(query))


def set_tenant_disabled(*, session: Session, tenant_id: int, disabled: bool = True) -> Tenant:
    """Disable (or re-enable) a tenant: its keys stop authenticating while it is disabled."""
    tenant = get_tenant(session=session, tenant_id=tenant_id)
    tenant.disabled = disabled
    session.commit()
    return tenant


def update_tenant_quotas(*, session: Session, tenant_id: int, **quotas: int | None) -> Tenant:
    """Set the named quotas (any of QUOTA_FIELDS); None removes the tenant-specific limit."""
    unknown = sorted(set(quotas) - set(QUOTA_FIELDS))
    if unknown:
        raise ValueError(f"unknown quota field(s) {unknown}; expected some of {QUOTA_FIELDS}")
    checked = {field: _check_quota(field, value) for field, value in quotas.items()}
    tenant = get_tenant(session=session, tenant_id=tenant_id)
    for field, value in checked.items():
        setattr(tenant, field, value)
    session.commit()
    return tenant
