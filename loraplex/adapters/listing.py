"""Read-side queries for pages of tenants and adapters: search by name, limit and offset in SQL,
and the per-row figures a listing shows (adapter counts, versions, labels of version ids).

Everything here runs a fixed number of queries per page, whatever the number of tenants or
adapters in the registry, so that listings stay fast at thousands of rows.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session

from loraplex.adapters.models import STATUS_READY, Adapter, AdapterVersion, Tenant
from loraplex.adapters.registry import MAX_NAME_LENGTH

T = TypeVar("T")
MAX_PAGE_SIZE = 500
MAX_OFFSET = 2**31 - 1
# What a name may contain (registry.NAME_PATTERN), plus "/" to search "tenant/adapter".
SEARCH_PATTERN = re.compile(r"[a-z0-9._/-]*")


@dataclass(frozen=True)
class ResultPage(Generic[T]):
    items: list[T]  # the rows of this page, in the listing's order
    total: int  # rows matching the search on all pages
    limit: int | None  # None: every matching row is on this page
    offset: int


@dataclass(frozen=True)
class VersionLabel:
    """Who owns an adapter version, for showing an engine slot by name."""

    version_id: int
    tenant_id: int
    tenant_name: str
    adapter_name: str
    version: int

    @property
    def reference(self) -> str:
        return f"{self.tenant_name}/{self.adapter_name}:v{self.version}"


def normalize_search(text: str | None) -> str:
    """The search as names are written (lowercase), or ValueError if no name could match it."""
    if text is None:
        return ""
    search = text.strip().lower()
    if len(search) > 2 * MAX_NAME_LENGTH + 1:
        raise ValueError(f"search must be at most {2 * MAX_NAME_LENGTH + 1} characters")
    if SEARCH_PATTERN.fullmatch(search) is None:
        raise ValueError("search may contain only letters, digits, '.', '_', '-' and '/'")
    return search


def _check_page(limit: int | None, offset: int) -> None:
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE
    ):
        raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"offset must be an integer from 0 to {MAX_OFFSET}, got {offset!r}")


def _page(session: Session, query: Select, *, limit: int | None, offset: int) -> ResultPage:
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    items = list(session.scalars(query.limit(limit).offset(offset)))
    return ResultPage(items=items, total=int(total or 0), limit=limit, offset=offset)


def _contains(column: ColumnElement[str], text: str) -> ColumnElement[bool]:
    # Names are lowercase, so a plain LIKE matches on every backend; '%' and '_' are escaped.
    return column.contains(text, autoescape=True)


def search_tenants(
    *, session: Session, search: str = "", limit: int | None = 50, offset: int = 0
) -> ResultPage[Tenant]:
    """Tenants whose name contains `search`, by id (`limit=None`: all of them)."""
    _check_page(limit, offset)
    search = normalize_search(search)
    query = select(Tenant).order_by(Tenant.id)
    if search:
        query = query.where(_contains(Tenant.name, search))
    return _page(session, query, limit=limit, offset=offset)


def tenant_names(*, session: Session, tenant_ids: Collection[int]) -> dict[int, str]:
    if not tenant_ids:
        return {}
    rows = session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(set(tenant_ids))))
    return {row.id: row.name for row in rows}


def search_adapters(
    *,
    session: Session,
    tenant_id: int | None = None,
    search: str = "",
    limit: int | None = 50,
    offset: int = 0,
) -> ResultPage[Adapter]:
    """Active adapters (of one tenant, or all) whose name or tenant's name contains `search`,
    by tenant and name. A search `tenant/name` matches both parts."""
    _check_page(limit, offset)
    search = normalize_search(search)
    query = (
        select(Adapter)
        .join(Tenant, Adapter.tenant_id == Tenant.id)
        .where(Adapter.deleted_at.is_(None))
        .order_by(Tenant.name, Adapter.name)
    )
    if tenant_id is not None:
        query = query.where(Adapter.tenant_id == tenant_id)
    if "/" in search:
        tenant_part, _, adapter_part = search.partition("/")
        query = query.where(
            _contains(Tenant.name, tenant_part), _contains(Adapter.name, adapter_part)
        )
    elif search:
        query = query.where(or_(_contains(Adapter.name, search), _contains(Tenant.name, search)))
    return _page(session, query, limit=limit, offset=offset)


def count_adapters_by_tenant(*, session: Session, tenant_ids: Collection[int]) -> dict[int, int]:
    """Active adapters of each tenant (0 for a tenant without any)."""
    counts = dict.fromkeys(tenant_ids, 0)
    if not counts:
        return counts
    rows = session.execute(
        select(Adapter.tenant_id, func.count())
        .where(Adapter.tenant_id.in_(set(tenant_ids)), Adapter.deleted_at.is_(None))
        .group_by(Adapter.tenant_id)
    )
    for tenant, count in rows:
        counts[tenant] = int(count)
    return counts


def versions_by_adapter(
    *, session: Session, adapter_ids: Collection[int]
) -> dict[int, list[AdapterVersion]]:
    """The ready versions of each adapter, oldest first, in one query."""
    found: dict[int, list[AdapterVersion]] = {adapter_id: [] for adapter_id in adapter_ids}
    if not found:
        return found
    rows = session.scalars(
        select(AdapterVersion)
        .where(
            AdapterVersion.adapter_id.in_(set(adapter_ids)), AdapterVersion.status == STATUS_READY
        )
        .order_by(AdapterVersion.adapter_id, AdapterVersion.version)
    )
    grouped: dict[int, list[AdapterVersion]] = defaultdict(list)
    for row in rows:
        grouped[row.adapter_id].append(row)
    found.update(grouped)
    return found


def describe_versions(*, session: Session, version_ids: Collection[int]) -> dict[int, VersionLabel]:
    """Tenant, adapter and version number of each version id (deleted ones included)."""
    if not version_ids:
        return {}
    rows = session.execute(
        select(AdapterVersion.id, AdapterVersion.version, Adapter.name, Tenant.id, Tenant.name)
        .join(Adapter, AdapterVersion.adapter_id == Adapter.id)
        .join(Tenant, Adapter.tenant_id == Tenant.id)
        .where(AdapterVersion.id.in_(set(version_ids)))
    )
    return {
        version_id: VersionLabel(version_id, tenant_id, tenant_name, adapter_name, version)
        for version_id, version, adapter_name, tenant_id, tenant_name in rows
    }
