"""FastAPI dependencies: the app state, a database session, and the caller's identity.

Keys arrive as `Authorization: Bearer <key>`. A missing, unknown or revoked key (or one of a
disabled tenant) is a 401; a valid key of the wrong role is a 403: tenant keys on the admin API,
and admin keys (which belong to no tenant) on the tenant API.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from loraplex.adapters.api_keys import verify_api_key
from loraplex.adapters.models import ROLE_ADMIN, ROLE_TENANT
from loraplex.platform.errors import APIError, unauthorized
from loraplex.platform.state import AppState


@dataclass(frozen=True)
class Principal:
    """Who is calling, read once per request and detached from the database session."""

    key_id: int
    role: str  # "tenant" or "admin"
    tenant_id: int | None  # None for admin keys
    tenant_name: str
    requests_per_minute: int | None
    tokens_per_minute: int | None


def get_state(request: Request) -> AppState:
    return request.app.state.loraplex


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(
    auto_error=False,
    description="A tenant key for /v1, an admin key for /admin/v1 (`lpx_...`).",
)


def authenticate(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    if credentials is None:
        raise unauthorized("missing API key: send the header 'Authorization: Bearer <key>'")
    with state.sessions() as session:
        key = verify_api_key(session=session, presented=credentials.credentials)
        if key is None:
            raise unauthorized("invalid or revoked API key")
        tenant = key.tenant
        return Principal(
            key_id=key.id,
            role=key.role,
            tenant_id=key.tenant_id,
            tenant_name=tenant.name if tenant is not None else "",
            requests_per_minute=tenant.requests_per_minute if tenant is not None else None,
            tokens_per_minute=tenant.tokens_per_minute if tenant is not None else None,
        )


def require_tenant(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    if principal.role != ROLE_TENANT:
        raise APIError(403, "this endpoint needs a tenant key; admin keys belong to no tenant")
    return principal


def require_admin(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
    if principal.role != ROLE_ADMIN:
        raise APIError(403, "this endpoint needs an admin key")
    return principal


TenantDep = Annotated[Principal, Depends(require_tenant)]
AdminDep = Annotated[Principal, Depends(require_admin)]
