"""What `loraplex serve` does before serving: the data folder, the database schema, and an
admin key, so that an embedded deployment needs no step of its own."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from loraplex.adapters import migrate
from loraplex.adapters.api_keys import (
    DISPLAY_PREFIX_LENGTH,
    KEY_SCHEME,
    create_api_key,
    hash_api_key,
)
from loraplex.adapters.lifecycle import sweep_orphans
from loraplex.adapters.models import ROLE_ADMIN, ApiKey
from loraplex.adapters.object_store import open_object_store
from loraplex.platform.db import create_db_engine, create_session_factory
from loraplex.platform.settings import Settings

logger = logging.getLogger(__name__)
ADMIN_KEY_PATTERN = re.compile(re.escape(KEY_SCHEME) + r"[A-Za-z0-9_-]{16,252}")
BOOTSTRAP_KEY_NAME = "bootstrap"


def install_admin_key(*, session: Session, plaintext: str) -> bool:
    """Make `plaintext` a valid admin key (stored as its hash); False if it already was."""
    if ADMIN_KEY_PATTERN.fullmatch(plaintext) is None:
        raise ValueError(
            f"LORAPLEX_ADMIN_KEY must be {KEY_SCHEME!r} followed by 16-252 characters of "
            "letters, digits, '_' or '-'"
        )
    key_hash = hash_api_key(plaintext)
    existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
    if existing is not None:
        if existing.role != ROLE_ADMIN or existing.revoked_at is not None:
            raise ValueError("LORAPLEX_ADMIN_KEY is a revoked key or a tenant's key")
        return False
    session.add(
        ApiKey(
            tenant_id=None,
            role=ROLE_ADMIN,
            name=BOOTSTRAP_KEY_NAME,
            prefix=plaintext[:DISPLAY_PREFIX_LENGTH],
            key_hash=key_hash,
        )
    )
    session.commit()
    return True


def has_admin_key(*, session: Session) -> bool:
    query = select(ApiKey.id).where(ApiKey.role == ROLE_ADMIN, ApiKey.revoked_at.is_(None))
    return session.scalar(query.limit(1)) is not None


def prepare_service(settings: Settings) -> str | None:
    """Create the data folder, migrate the database, sweep orphaned objects, and make sure an
    admin key exists. Returns the plaintext of an admin key made now (to print once), or None."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.database_url)
    engine = create_db_engine(settings.database_url)
    try:
        with create_session_factory(engine)() as session:
            store = open_object_store(
                settings.object_store_url,
                endpoint_url=settings.object_store_endpoint_url,
                region=settings.object_store_region,
            )
            sweep_orphans(
                session=session,
                store=store,
                grace=timedelta(seconds=settings.orphan_grace_seconds),
            )
            if settings.admin_key is not None:
                install_admin_key(session=session, plaintext=settings.admin_key.get_secret_value())
                return None
            if has_admin_key(session=session):
                return None
            created = create_api_key(
                session=session, tenant_id=None, role=ROLE_ADMIN, name=BOOTSTRAP_KEY_NAME
            )
            return created.plaintext
    finally:
        engine.dispose()
