"""Adapter references as clients write them: `name`, `name:version`, or qualified with the
tenant's name, `tenant/name[:version]`.

The short form always means the caller's own tenant. The qualified form names one adapter on
the whole platform; naming another tenant's is answered exactly as a name that does not exist
(404), whether that tenant or adapter exists or not, so nothing about other tenants leaks.
"""

from __future__ import annotations

from loraplex.adapters.errors import NotFoundError
from loraplex.platform.deps import Principal


def local_reference(reference: str, principal: Principal) -> str:
    """`reference` within the caller's tenant; NotFoundError if it names another tenant."""
    tenant, separator, local = reference.rpartition("/")
    if not separator:
        return reference
    if tenant != principal.tenant_name or not local:
        raise NotFoundError(f"adapter {reference!r} not found")
    return local
