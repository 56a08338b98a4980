"""Helpers that write registry rows and uploads, shared by the database-backed tests."""

from __future__ import annotations

from loraplex.adapters.lifecycle import UploadPolicy, upload_adapter_version
from loraplex.adapters.models import AdapterVersion
from loraplex.adapters.object_store import ObjectStore
from loraplex.adapters.registry import (
    allocate_version_number,
    create_adapter_version,
    reserve_adapter,
    version_object_prefix,
)
from loraplex.adapters.staging import UploadedFile
from tests.adapters.support import AdapterFiles


def record_version(session, tenant_id: int, name: str) -> AdapterVersion:
    """A new version row of the tenant's adapter `name` (no objects behind it)."""
    adapter = reserve_adapter(session=session, tenant_id=tenant_id, name=name, base_model="m")
    number = allocate_version_number(session=session, adapter_id=adapter.id)
    return create_adapter_version(
        session=session,
        adapter_id=adapter.id,
        version=number,
        rank=8,
        alpha=16.0,
        use_rslora=False,
        target_modules=["q_proj", "v_proj"],
        size_bytes=1234,
        sha256="a" * 64,
        config_sha256="b" * 64,
        object_key=version_object_prefix(
            tenant_id=tenant_id, adapter_id=adapter.id, version=number
        ),
    )


def upload(
    session,
    store: ObjectStore,
    tenant_id: int,
    policy: UploadPolicy,
    adapter: AdapterFiles,
    name: str = "support-bot",
    files: list[UploadedFile] | None = None,
) -> AdapterVersion:
    """Upload `adapter` (or `files`) as a new version of the tenant's adapter `name`."""
    return upload_adapter_version(
        session=session,
        store=store,
        tenant_id=tenant_id,
        name=name,
        files=files or adapter.uploads(),
        policy=policy,
    )
