"""Publishing and deleting a tenant's adapters, as the tenant API and the dashboard both do.

Uploads are checked against the platform's policy (the served base model, the engine's largest
rank, the size ceiling); deletions return the version ids that the engine and the disk cache must
then forget (`AdapterLoader.forget`, which is async and so left to the caller).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile

from loraplex.adapters.errors import NotFoundError
from loraplex.adapters.lifecycle import (
    UploadPolicy,
    delete_adapter,
    delete_adapter_version,
    upload_adapter_version,
)
from loraplex.adapters.models import AdapterVersion
from loraplex.adapters.registry import get_adapter, list_adapter_versions
from loraplex.adapters.staging import UploadedFile
from loraplex.platform.errors import APIError
from loraplex.platform.state import AppState

UPLOAD_HELP = (
    "`name`, and either two `files` (adapter_config.json and adapter_model.safetensors) or one "
    "`archive` (.tar.gz, .tgz or .zip holding them)."
)


def upload_policy(state: AppState) -> UploadPolicy:
    settings = state.settings
    return UploadPolicy(
        base_model=state.served_model_name,
        base_shape=state.base_shape,
        max_rank=settings.max_lora_rank,
        max_upload_bytes=settings.max_upload_bytes,
    )


def publish_upload(
    state: AppState,
    *,
    session: Session,
    tenant_id: int,
    name: str,
    files: Sequence[UploadFile],
    archive: UploadFile | None,
) -> AdapterVersion:
    """Validate and store a new version of the tenant's adapter `name` from `files` (config
    and weights) or one `archive`; APIError or the registry's errors for what is refused."""
    if name == state.served_model_name:
        raise APIError(400, f"{name!r} is the base model's name; choose another", param="name")
    uploads = list(files)
    if archive is not None:
        uploads.append(archive)
    if not uploads:
        raise APIError(400, UPLOAD_HELP, param="files")
    if archive is not None and len(uploads) > 1:
        raise APIError(400, "send either files or an archive, not both", param="archive")
    return upload_adapter_version(
        session=session,
        store=state.store,
        tenant_id=tenant_id,
        name=name,
        files=[UploadedFile(upload.filename or "", upload.file) for upload in uploads],
        policy=upload_policy(state),
    )


def delete_adapter_or_version(
    state: AppState, *, session: Session, tenant_id: int, name: str, version: int | None
) -> list[int]:
    """Delete the tenant's adapter `name` (every version) or one version of it; returns the
    removed version ids, which the engine must forget next."""
    if version is None:
        adapter = delete_adapter(session=session, store=state.store, tenant_id=tenant_id, name=name)
        return [v.id for v in adapter.versions]
    adapter = get_adapter(session=session, tenant_id=tenant_id, name=name)
    ready = list_adapter_versions(session=session, adapter_id=adapter.id)
    if all(v.version != version for v in ready):
        raise NotFoundError(f"adapter '{name}:{version}' not found")
    row = delete_adapter_version(
        session=session, store=state.store, tenant_id=tenant_id, name=name, version=version
    )
    return [row.id]
