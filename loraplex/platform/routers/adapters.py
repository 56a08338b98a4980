"""A tenant's adapters: upload a version, list, get, delete (a whole adapter or one version).

Every lookup is scoped to the caller's tenant, so another tenant's adapter answers exactly as a
name that does not exist: 404. A reference is `name` or `name:version`, optionally qualified
with the caller's tenant name (`tenant/name:version`).
"""

from __future__ import annotations

from typing import Annotated

import anyio.from_thread
from fastapi import APIRouter, File, Form, UploadFile

from loraplex.adapters.errors import NotFoundError
from loraplex.adapters.registry import (
    get_adapter,
    list_adapter_versions,
    list_adapters,
    parse_adapter_reference,
)
from loraplex.platform.adapter_service import (
    UPLOAD_HELP,
    delete_adapter_or_version,
    publish_upload,
)
from loraplex.platform.deps import Principal, SessionDep, StateDep, TenantDep
from loraplex.platform.errors import APIError
from loraplex.platform.references import local_reference
from loraplex.platform.schemas import AdapterOut, AdapterVersionOut, DeletedOut, ListOf

router = APIRouter(prefix="/v1/adapters", tags=["Adapters"])


def _parse(reference: str, principal: Principal) -> tuple[str, int | None]:
    try:
        return parse_adapter_reference(local_reference(reference, principal))
    except ValueError:
        # No adapter can have this name; answer as for any name that does not exist.
        raise APIError(404, f"adapter {reference!r} not found", code="not_found") from None


@router.post(
    "",
    status_code=201,
    response_model=AdapterVersionOut,
    summary="Upload a new version of an adapter",
    description=UPLOAD_HELP,
)
def upload_adapter(
    state: StateDep,
    session: SessionDep,
    principal: TenantDep,
    name: Annotated[
        str, Form(description="the adapter's name, [a-z0-9][a-z0-9._-]*, or tenant/name")
    ],
    files: Annotated[list[UploadFile] | None, File(description="config and weights")] = None,
    archive: Annotated[UploadFile | None, File(description="one archive of both")] = None,
) -> AdapterVersionOut:
    name = local_reference(name, principal)
    assert principal.tenant_id is not None
    row = publish_upload(
        state,
        session=session,
        tenant_id=principal.tenant_id,
        name=name,
        files=files or [],
        archive=archive,
    )
    return AdapterVersionOut.from_row(name, row)


@router.get("", response_model=ListOf[AdapterOut], summary="List your adapters")
def list_tenant_adapters(session: SessionDep, principal: TenantDep) -> ListOf[AdapterOut]:
    assert principal.tenant_id is not None
    adapters = list_adapters(session=session, tenant_id=principal.tenant_id)
    return ListOf[AdapterOut](
        data=[
            AdapterOut.from_row(a, list_adapter_versions(session=session, adapter_id=a.id))
            for a in adapters
        ]
    )


@router.get(
    "/{reference:path}/versions",
    response_model=ListOf[AdapterVersionOut],
    summary="List the versions of an adapter",
)
def list_versions(
    reference: str, session: SessionDep, principal: TenantDep
) -> ListOf[AdapterVersionOut]:
    assert principal.tenant_id is not None
    name, version = _parse(reference, principal)
    if version is not None:
        raise APIError(400, "name the adapter without a version", param="reference")
    adapter = get_adapter(session=session, tenant_id=principal.tenant_id, name=name)
    versions = list_adapter_versions(session=session, adapter_id=adapter.id)
    return ListOf[AdapterVersionOut](data=[AdapterVersionOut.from_row(name, v) for v in versions])


@router.get(
    "/{reference:path}",
    response_model=AdapterOut | AdapterVersionOut,
    summary="An adapter with its versions (`name`), or one version (`name:version`)",
)
def get_tenant_adapter(
    reference: str, session: SessionDep, principal: TenantDep
) -> AdapterOut | AdapterVersionOut:
    assert principal.tenant_id is not None
    name, version = _parse(reference, principal)
    adapter = get_adapter(session=session, tenant_id=principal.tenant_id, name=name)
    versions = list_adapter_versions(session=session, adapter_id=adapter.id)
    if version is None:
        return AdapterOut.from_row(adapter, versions)
    row = next((v for v in versions if v.version == version), None)
    if row is None:
        raise NotFoundError(f"adapter {reference!r} not found")
    return AdapterVersionOut.from_row(name, row)


@router.delete(
    "/{reference:path}",
    response_model=DeletedOut,
    summary="Delete an adapter (`name`, every version) or one version (`name:version`)",
)
def delete_tenant_adapter(
    reference: str, state: StateDep, session: SessionDep, principal: TenantDep
) -> DeletedOut:
    tenant_id = principal.tenant_id
    assert tenant_id is not None
    name, version = _parse(reference, principal)
    removed = delete_adapter_or_version(
        state, session=session, tenant_id=tenant_id, name=name, version=version
    )
    # This handler runs in a worker thread; the engine's adapter calls are async.
    anyio.from_thread.run(state.adapters.forget, removed)
    return DeletedOut(id=reference)
