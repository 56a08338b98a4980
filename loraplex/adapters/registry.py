"""Repository functions for adapters and their versions. Mutating functions commit.

An adapter is a tenant's name for a series of immutable versions; `name` resolves to its newest
ready version and `name:N` to version N. Deletion is soft: rows stay (usage keeps pointing at
them) with status `deleted`, and version numbers are never reused. Names (of adapters and
tenants) are identifiers typed in API calls; they are never used to build a filesystem path or
an object key, which use database ids.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from loraplex.adapters.errors import ConflictError, NotFoundError, QuotaExceededError
from loraplex.adapters.models import (
    STATUS_DELETED,
    STATUS_READY,
    Adapter,
    AdapterVersion,
    Tenant,
    utcnow,
)

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")
MAX_NAME_LENGTH = 64


def validate_name(name: object, *, kind: str = "adapter") -> str:
    """Return `name` if it is 1-64 chars of `[a-z0-9][a-z0-9._-]*`, else raise ValueError."""
    if not isinstance(name, str):
        raise ValueError(f"{kind} name must be a string")
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValueError(f"{kind} name must be 1-{MAX_NAME_LENGTH} characters, got {len(name)}")
    if NAME_PATTERN.fullmatch(name) is None:
        raise ValueError(
            f"invalid {kind} name {name!r}: use lowercase letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def parse_adapter_reference(reference: str) -> tuple[str, int | None]:
    """Split `name` or `name:version` into the name and the version (None means latest)."""
    if not isinstance(reference, str):
        raise ValueError("adapter reference must be a string")
    name, separator, version_text = reference.partition(":")
    validate_name(name)
    if not separator:
        return name, None
    if not version_text.isascii() or not version_text.isdigit() or int(version_text) < 1:
        raise ValueError(
            f"invalid adapter version {version_text!r} in {reference!r}: "
            "expected name:<positive integer>"
        )
    return name, int(version_text)


def version_object_prefix(*, tenant_id: int, adapter_id: int, version: int) -> str:
    """Where a version's files live in the object store (ids only, never user-chosen names)."""
    return f"tenants/{tenant_id}/adapters/{adapter_id}/v{version}/"


def get_adapter(
    *, session: Session, tenant_id: int, name: str, include_deleted: bool = False
) -> Adapter:
    adapter = session.scalar(
        select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == name)
    )
    if adapter is None or (adapter.deleted_at is not None and not include_deleted):
        raise NotFoundError(f"adapter {name!r} not found")
    return adapter


def count_active_adapters(*, session: Session, tenant_id: int) -> int:
    return session.scalar(
        select(func.count())
        .select_from(Adapter)
        .where(Adapter.tenant_id == tenant_id, Adapter.deleted_at.is_(None))
    )


def reserve_adapter(*, session: Session, tenant_id: int, name: str, base_model: str) -> Adapter:
    """The tenant's active adapter `name`, created (or revived if deleted) within its quota."""
    validate_name(name)
    # Lock the tenant row (PostgreSQL) so that concurrent creations count each other.
    tenant = session.scalar(select(Tenant).where(Tenant.id == tenant_id).with_for_update())
    if tenant is None:
        raise NotFoundError(f"tenant {tenant_id} not found")
    adapter = session.scalar(
        select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == name)
    )
    if adapter is not None and adapter.deleted_at is None:
        if adapter.base_model != base_model:
            session.rollback()
            raise ConflictError(
                f"adapter {name!r} was made for base model {adapter.base_model!r}, "
                f"not {base_model!r}; delete it or choose another name"
            )
        session.commit()
        return adapter
    if adapter is None:
        adapter = Adapter(tenant_id=tenant_id, name=name, base_model=base_model)
        session.add(adapter)
    else:
        adapter.deleted_at = None
        adapter.base_model = base_model
    try:
        # Write first, then count: on SQLite the write lock makes the count see every writer.
        session.flush()
        active = count_active_adapters(session=session, tenant_id=tenant_id)
    except IntegrityError:
        session.rollback()  # the same name was created concurrently: use that row
        return reserve_adapter(
            session=session, tenant_id=tenant_id, name=name, base_model=base_model
        )
    if tenant.max_adapters is not None and active > tenant.max_adapters:
        session.rollback()
        raise QuotaExceededError(
            f"tenant {tenant.name!r} already has its maximum of {tenant.max_adapters} adapters"
        )
    session.commit()
    return adapter


def allocate_version_number(*, session: Session, adapter_id: int) -> int:
    """Hand out the adapter's next version number; numbers are never given twice."""
    next_after = session.execute(
        update(Adapter)
        .where(Adapter.id == adapter_id)
        .values(next_version=Adapter.next_version + 1)
        .returning(Adapter.next_version)
    ).scalar_one()
    session.commit()
    return next_after - 1


def release_unused_adapter(*, session: Session, adapter_id: int, version: int) -> bool:
    """Undo the reservation of an upload that failed before its row (version number
    `version`): the adapter is marked deleted, so it no longer counts against the tenant's
    quota, if it has no version at all and no other upload has taken a number since. True if
    released."""
    has_versions = exists().where(AdapterVersion.adapter_id == adapter_id)
    released = session.execute(
        update(Adapter)
        .where(
            Adapter.id == adapter_id,
            Adapter.deleted_at.is_(None),
            Adapter.next_version == version + 1,
            ~has_versions,
        )
        .values(deleted_at=utcnow())
    ).rowcount
    session.commit()
    return released == 1


def create_adapter_version(
    *,
    session: Session,
    adapter_id: int,
    version: int,
    rank: int,
    alpha: float,
    use_rslora: bool,
    target_modules: Sequence[str],
    size_bytes: int,
    sha256: str,
    config_sha256: str,
    object_key: str,
) -> AdapterVersion:
    """Record a version whose files are already in the object store under `object_key`;
    a ConflictError if the adapter was deleted meanwhile (the row would be unreachable)."""
    adapter = session.scalar(select(Adapter).where(Adapter.id == adapter_id).with_for_update())
    if adapter is None or adapter.deleted_at is not None:
        session.rollback()
        raise ConflictError(f"adapter {adapter_id} was deleted while this version was uploaded")
    row = AdapterVersion(
        adapter_id=adapter_id,
        version=version,
        rank=rank,
        alpha=alpha,
        use_rslora=use_rslora,
        target_modules=list(target_modules),
        size_bytes=size_bytes,
        sha256=sha256,
        config_sha256=config_sha256,
        object_key=object_key,
        status=STATUS_READY,
    )
    session.add(row)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise ConflictError(f"version {version} of adapter {adapter_id} already exists") from exc
    return row


def resolve_adapter(*, session: Session, tenant_id: int, reference: str) -> AdapterVersion:
    """The ready version that `name` (newest) or `name:N` names within the tenant."""
    name, version = parse_adapter_reference(reference)
    query = (
        select(AdapterVersion)
        .join(Adapter)
        .where(
            Adapter.tenant_id == tenant_id,
            Adapter.name == name,
            Adapter.deleted_at.is_(None),
            AdapterVersion.status == STATUS_READY,
        )
    )
    if version is None:
        query = query.order_by(AdapterVersion.version.desc()).limit(1)
    else:
        query = query.where(AdapterVersion.version == version)
    found = session.scalar(query)
    if found is None:
        raise NotFoundError(f"adapter {reference!r} not found")
    return found


def get_adapter_version(*, session: Session, version_id: int) -> AdapterVersion:
    found = session.get(AdapterVersion, version_id)
    if found is None:
        raise NotFoundError(f"adapter version {version_id} not found")
    return found


def list_adapters(
    *, session: Session, tenant_id: int, include_deleted: bool = False
) -> list[Adapter]:
    query = select(Adapter).where(Adapter.tenant_id == tenant_id).order_by(Adapter.name)
    if not include_deleted:
        query = query.where(Adapter.deleted_at.is_(None))
    return list(session.scalars(query))


def list_adapter_versions(
    *, session: Session, adapter_id: int, include_deleted: bool = False
) -> list[AdapterVersion]:
    query = (
        select(AdapterVersion)
        .where(AdapterVersion.adapter_id == adapter_id)
        .order_by(AdapterVersion.version)
    )
    if not include_deleted:
        query = query.where(AdapterVersion.status == STATUS_READY)
    return list(session.scalars(query))


def mark_version_deleted(*, session: Session, version: AdapterVersion) -> str:
    """Soft-delete one version; returns its object prefix, whose files the caller removes next."""
    if version.status != STATUS_DELETED:
        version.status = STATUS_DELETED
        version.deleted_at = utcnow()
        session.commit()
    return version.object_key


def mark_adapter_deleted(*, session: Session, adapter: Adapter) -> list[str]:
    """Soft-delete an adapter and all its versions; returns the object prefixes to remove."""
    now = utcnow()
    prefixes = []
    for version in adapter.versions:
        if version.status != STATUS_DELETED:
            version.status = STATUS_DELETED
            version.deleted_at = now
        prefixes.append(version.object_key)
    if adapter.deleted_at is None:
        adapter.deleted_at = now
    session.commit()
    return prefixes


def referenced_object_prefixes(*, session: Session) -> set[str]:
    """Prefixes of every ready version: objects under them must never be swept."""
    return set(
        session.scalars(
            select(AdapterVersion.object_key).where(AdapterVersion.status == STATUS_READY)
        )
    )
