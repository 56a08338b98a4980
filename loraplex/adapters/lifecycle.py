"""Uploading, deleting and sweeping adapter versions across the database and the object store.

The order of writes is what makes a crash harmless:
- upload: validate everything in a private staging folder, reserve a fresh version number, write
  the objects under that version's own prefix, and only then commit the row. A crash before the
  commit leaves objects that no row references (an orphan), never a row without bytes.
- delete: mark the row deleted and commit, then remove the objects. A crash in between leaves
  objects of a deleted row, which are orphans as well.
- `sweep_orphans` removes such objects once they are older than a grace period, so that an
  upload still between its object writes and its commit is never swept.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from loraplex.adapter_format.peft import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    BaseModelShape,
    validate_adapter_files,
)
from loraplex.adapters.errors import NotFoundError, TenantDisabledError
from loraplex.adapters.models import Adapter, AdapterVersion, utcnow
from loraplex.adapters.object_store import ObjectStore
from loraplex.adapters.registry import (
    allocate_version_number,
    create_adapter_version,
    get_adapter,
    mark_adapter_deleted,
    mark_version_deleted,
    referenced_object_prefixes,
    release_unused_adapter,
    reserve_adapter,
    validate_name,
    version_object_prefix,
)
from loraplex.adapters.staging import UploadedFile, stage_upload
from loraplex.adapters.tenants import get_tenant

logger = logging.getLogger(__name__)

OBJECTS_ROOT = "tenants/"
DEFAULT_ORPHAN_GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class UploadPolicy:
    base_model: str  # name of the served base model, recorded on each adapter
    base_shape: BaseModelShape  # its dimensions, which every tensor must fit
    max_rank: int  # largest LoRA rank the engine's slots hold
    max_upload_bytes: int  # platform-wide ceiling; a tenant's quota may only lower it


def upload_adapter_version(
    *,
    session: Session,
    store: ObjectStore,
    tenant_id: int,
    name: str,
    files: Sequence[UploadedFile],
    policy: UploadPolicy,
    staging_root: Path | None = None,
) -> AdapterVersion:
    """Validate and publish a new version of the tenant's adapter `name`; returns its row."""
    validate_name(name)
    tenant = get_tenant(session=session, tenant_id=tenant_id)
    if tenant.disabled:
        raise TenantDisabledError(f"tenant {tenant.name!r} is disabled")
    limit = policy.max_upload_bytes
    if tenant.max_upload_bytes is not None:
        limit = min(limit, tenant.max_upload_bytes)
    with tempfile.TemporaryDirectory(prefix="upload-", dir=staging_root) as folder:
        staged = stage_upload(files, folder=Path(folder), max_bytes=limit)
        spec = validate_adapter_files(
            staged.config_path,
            staged.weights_path,
            base=policy.base_shape,
            max_rank=policy.max_rank,
        )
        adapter = reserve_adapter(
            session=session, tenant_id=tenant_id, name=name, base_model=policy.base_model
        )
        version = allocate_version_number(session=session, adapter_id=adapter.id)
        prefix = version_object_prefix(tenant_id=tenant_id, adapter_id=adapter.id, version=version)
        try:
            store.put(prefix + ADAPTER_CONFIG_FILE, staged.config_path)
            store.put(prefix + ADAPTER_WEIGHTS_FILE, staged.weights_path)
            return create_adapter_version(
                session=session,
                adapter_id=adapter.id,
                version=version,
                rank=spec.rank,
                alpha=spec.alpha,
                use_rslora=spec.use_rslora,
                target_modules=spec.target_modules,
                size_bytes=staged.total_bytes,
                sha256=staged.weights_sha256,
                config_sha256=staged.config_sha256,
                object_key=prefix,
            )
        except BaseException:
            _remove_objects(store, prefix)
            _release_reservation(session, adapter.id, version)
            raise


def delete_adapter_version(
    *, session: Session, store: ObjectStore, tenant_id: int, name: str, version: int
) -> AdapterVersion:
    """Soft-delete version `version` of the tenant's adapter, then remove its objects."""
    adapter = get_adapter(session=session, tenant_id=tenant_id, name=name)
    row = next((v for v in adapter.versions if v.version == version), None)
    if row is None:
        raise NotFoundError(f"adapter {name!r} has no version {version}")
    _remove_objects(store, mark_version_deleted(session=session, version=row))
    return row


def delete_adapter(*, session: Session, store: ObjectStore, tenant_id: int, name: str) -> Adapter:
    """Soft-delete the tenant's adapter and every version of it, then remove their objects."""
    adapter = get_adapter(session=session, tenant_id=tenant_id, name=name)
    for prefix in mark_adapter_deleted(session=session, adapter=adapter):
        _remove_objects(store, prefix)
    return adapter


def _release_reservation(session: Session, adapter_id: int, version: int) -> None:
    """After a failed upload: free the adapter it reserved if nothing else uses it. Best
    effort: the upload's own error is what the caller must see."""
    try:
        session.rollback()
        release_unused_adapter(session=session, adapter_id=adapter_id, version=version)
    except Exception:
        logger.exception("could not release adapter %d after a failed upload", adapter_id)


def _remove_objects(store: ObjectStore, prefix: str) -> None:
    # A failure here only leaves an orphan, which the sweeper removes later.
    try:
        store.delete_prefix(prefix)
    except Exception:
        logger.warning("could not remove objects under %s; the sweeper will", prefix, exc_info=True)


def sweep_orphans(
    *,
    session: Session,
    store: ObjectStore,
    grace: timedelta = DEFAULT_ORPHAN_GRACE,
    now: datetime | None = None,
) -> list[str]:
    """Delete objects under `tenants/` that no ready version references and that are older than
    `grace`; returns the deleted keys."""
    cutoff = (now or utcnow()) - grace
    # List before reading the rows: a row committed meanwhile is then seen and its bytes kept.
    candidates = [info for info in store.list(OBJECTS_ROOT) if info.last_modified < cutoff]
    referenced = referenced_object_prefixes(session=session)
    removed = []
    for info in candidates:
        if info.key.rpartition("/")[0] + "/" in referenced:
            continue
        store.delete(info.key)
        removed.append(info.key)
    if removed:
        logger.info("swept %d orphaned objects", len(removed))
    return removed
