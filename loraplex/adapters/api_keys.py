"""API keys: created once in plaintext, stored as a SHA-256 hash, verified in constant time.

A key is `lpx_` followed by 43 url-safe characters (32 random bytes). Its first characters are
kept in clear as a display prefix and as the index used to find the row; the secret part is only
ever compared through its hash with `hmac.compare_digest`. SHA-256 without a salt is enough here:
the keys are long random strings, not passwords, so there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from loraplex.adapters.errors import NotFoundError
from loraplex.adapters.models import ROLE_ADMIN, ROLE_TENANT, ApiKey, utcnow
from loraplex.adapters.tenants import get_tenant

KEY_SCHEME = "lpx_"
KEY_RANDOM_BYTES = 32
DISPLAY_PREFIX_LENGTH = len(KEY_SCHEME) + 8
# Recording every use would turn each request into a write; once a minute is precise enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_UNUSED_HASH = hashlib.sha256(b"no key has this hash").hexdigest()


@dataclass(frozen=True)
class NewApiKey:
    record: ApiKey  # the stored row (prefix, hash, role, tenant)
    plaintext: str  # the key itself: show it to the user once, it cannot be recovered


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(
    *, session: Session, tenant_id: int | None, role: str = ROLE_TENANT, name: str = ""
) -> NewApiKey:
    """Create a key for a tenant (role "tenant") or an operator (role "admin", no tenant)."""
    if role not in (ROLE_TENANT, ROLE_ADMIN):
        raise ValueError(f"role must be {ROLE_TENANT!r} or {ROLE_ADMIN!r}, got {role!r}")
    if role == ROLE_ADMIN and tenant_id is not None:
        raise ValueError("an admin key belongs to no tenant: pass tenant_id=None")
    if role == ROLE_TENANT:
        if tenant_id is None:
            raise ValueError("a tenant key needs a tenant_id")
        get_tenant(session=session, tenant_id=tenant_id)
    if len(name) > 128:
        raise ValueError("key name must be at most 128 characters")
    plaintext = KEY_SCHEME + secrets.token_urlsafe(KEY_RANDOM_BYTES)
    record = ApiKey(
        tenant_id=tenant_id,
        role=role,
        name=name,
        prefix=plaintext[:DISPLAY_PREFIX_LENGTH],
        key_hash=hash_api_key(plaintext),
    )
    session.add(record)
    session.commit()
    return NewApiKey(record=record, plaintext=plaintext)


def verify_api_key(*, session: Session, presented: str) -> ApiKey | None:
    """The active key matching `presented`, or None (unknown, revoked, or tenant disabled)."""
    if not isinstance(presented, str) or not presented.startswith(KEY_SCHEME):
        return None
    if len(presented) < DISPLAY_PREFIX_LENGTH or len(presented) > 256:
        return None
    presented_hash = hash_api_key(presented)
    candidates = session.scalars(
        select(ApiKey).where(ApiKey.prefix == presented[:DISPLAY_PREFIX_LENGTH])
    ).all()
    match: ApiKey | None = None
    # Compare against every candidate (and a dummy when there is none) so timing says nothing.
    for candidate in candidates or [None]:
        stored = candidate.key_hash if candidate is not None else _UNUSED_HASH
        if hmac.compare_digest(stored, presented_hash) and candidate is not None:
            match = candidate
    if match is None or match.revoked_at is not None:
        return None
    if match.tenant is not None and match.tenant.disabled:
        return None
    now = utcnow()
    if match.last_used_at is None or now - match.last_used_at >= LAST_USED_RESOLUTION:
        match.last_used_at = now
        session.commit()
    return match


def revoke_api_key(*, session: Session, key_id: int, tenant_id: int | None = None) -> ApiKey:
    """Revoke a key; with `tenant_id`, only that tenant's keys are visible (others: not found)."""
    record = session.get(ApiKey, key_id)
    if record is None or (tenant_id is not None and record.tenant_id != tenant_id):
        raise NotFoundError(f"API key {key_id} not found")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
        session.commit()
    return record


def list_api_keys(
    *, session: Session, tenant_id: int | None = None, include_revoked: bool = False
) -> list[ApiKey]:
    """Keys of one tenant, or of every tenant and admin when `tenant_id` is None."""
    query = select(ApiKey).order_by(ApiKey.id)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query))
