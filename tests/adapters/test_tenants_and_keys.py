from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select

from loraplex.adapters import api_keys
from loraplex.adapters.api_keys import create_api_key, list_api_keys, revoke_api_key, verify_api_key
from loraplex.adapters.errors import ConflictError, NotFoundError
from loraplex.adapters.models import ApiKey
from loraplex.adapters.tenants import (
    create_tenant,
    get_tenant,
    get_tenant_by_name,
    list_tenants,
    set_tenant_disabled,
    update_tenant_quotas,
)


def test_create_get_list_tenants(session):
    acme = create_tenant(session=session, name="acme", max_adapters=3, tokens_per_minute=1000)
    other = create_tenant(session=session, name="other.co")
    assert get_tenant(session=session, tenant_id=acme.id).max_adapters == 3
    assert get_tenant_by_name(session=session, name="other.co").id == other.id
    assert [t.name for t in list_tenants(session=session)] == ["acme", "other.co"]
    assert acme.created_at.tzinfo is not None


def test_duplicate_tenant_name_conflicts(session):
    create_tenant(session=session, name="acme")
    with pytest.raises(ConflictError, match="already exists"):
        create_tenant(session=session, name="acme")
    assert len(list_tenants(session=session)) == 1


@pytest.mark.parametrize("name", ["", "Acme", "-acme", "a b", "x" * 65, "../etc"])
def test_bad_tenant_names_are_refused(session, name):
    with pytest.raises(ValueError, match="tenant name"):
        create_tenant(session=session, name=name)


def test_quotas_validated_and_updated(session):
    with pytest.raises(ValueError, match="max_adapters"):
        create_tenant(session=session, name="acme", max_adapters=0)
    tenant = create_tenant(session=session, name="acme")
    update_tenant_quotas(session=session, tenant_id=tenant.id, requests_per_minute=60)
    assert get_tenant(session=session, tenant_id=tenant.id).requests_per_minute == 60
    with pytest.raises(ValueError, match="unknown quota"):
        update_tenant_quotas(session=session, tenant_id=tenant.id, bogus=1)


def test_unknown_tenant_not_found(session):
    with pytest.raises(NotFoundError):
        get_tenant(session=session, tenant_id=12345)
    with pytest.raises(NotFoundError):
        set_tenant_disabled(session=session, tenant_id=12345)


def test_key_created_once_and_stored_hashed(session):
    tenant = create_tenant(session=session, name="acme")
    created = create_api_key(session=session, tenant_id=tenant.id, name="ci")
    key = created.plaintext
    assert key.startswith("lpx_") and len(key) >= 4 + 43
    row = session.scalar(select(ApiKey).where(ApiKey.id == created.record.id))
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert row.prefix == key[:12]
    stored = {str(value) for value in vars(row).values()}
    assert key not in stored
    assert create_api_key(session=session, tenant_id=tenant.id).plaintext != key


def test_verify_accepts_only_the_exact_active_key(session):
    tenant = create_tenant(session=session, name="acme")
    key = create_api_key(session=session, tenant_id=tenant.id).plaintext
    found = verify_api_key(session=session, presented=key)
    assert found is not None and found.tenant_id == tenant.id
    assert found.last_used_at is not None
    assert (
        verify_api_key(session=session, presented=key[:-1] + ("A" if key[-1] != "A" else "B"))
        is None
    )
    assert verify_api_key(session=session, presented="lpx_" + "x" * 43) is None
    assert verify_api_key(session=session, presented="Bearer " + key) is None
    assert verify_api_key(session=session, presented="") is None


def test_verify_compares_every_key_sharing_a_prefix(session, monkeypatch):
    tenant = create_tenant(session=session, name="acme")
    first = create_api_key(session=session, tenant_id=tenant.id)
    second = create_api_key(session=session, tenant_id=tenant.id)
    # Force a prefix collision: the hash, not the prefix, must pick the row.
    first.record.prefix = second.record.prefix
    session.commit()
    compared = []
    real_compare = api_keys.hmac.compare_digest
    monkeypatch.setattr(
        api_keys.hmac, "compare_digest", lambda a, b: compared.append(a) or real_compare(a, b)
    )
    assert verify_api_key(session=session, presented=second.plaintext).id == second.record.id
    assert len(compared) == 2


def test_revoked_key_and_disabled_tenant_stop_working(session):
    tenant = create_tenant(session=session, name="acme")
    first = create_api_key(session=session, tenant_id=tenant.id)
    second = create_api_key(session=session, tenant_id=tenant.id)
    revoke_api_key(session=session, key_id=first.record.id)
    assert verify_api_key(session=session, presented=first.plaintext) is None
    assert [k.id for k in list_api_keys(session=session, tenant_id=tenant.id)] == [second.record.id]
    assert len(list_api_keys(session=session, tenant_id=tenant.id, include_revoked=True)) == 2

    set_tenant_disabled(session=session, tenant_id=tenant.id)
    assert verify_api_key(session=session, presented=second.plaintext) is None
    assert [t.name for t in list_tenants(session=session, include_disabled=False)] == []
    set_tenant_disabled(session=session, tenant_id=tenant.id, disabled=False)
    assert verify_api_key(session=session, presented=second.plaintext) is not None


def test_revoke_is_scoped_to_the_tenant(session):
    acme = create_tenant(session=session, name="acme")
    other = create_tenant(session=session, name="other")
    key = create_api_key(session=session, tenant_id=acme.id)
    with pytest.raises(NotFoundError):
        revoke_api_key(session=session, key_id=key.record.id, tenant_id=other.id)
    assert verify_api_key(session=session, presented=key.plaintext) is not None


def test_admin_keys(session):
    admin = create_api_key(session=session, tenant_id=None, role="admin")
    found = verify_api_key(session=session, presented=admin.plaintext)
    assert found.role == "admin" and found.tenant_id is None
    tenant = create_tenant(session=session, name="acme")
    with pytest.raises(ValueError, match="admin key"):
        create_api_key(session=session, tenant_id=tenant.id, role="admin")
    with pytest.raises(ValueError, match="tenant_id"):
        create_api_key(session=session, tenant_id=None)
    with pytest.raises(ValueError, match="role"):
        create_api_key(session=session, tenant_id=tenant.id, role="root")
    with pytest.raises(NotFoundError):
        create_api_key(session=session, tenant_id=999)


def test_last_used_is_written_at_most_once_a_minute(session):
    tenant = create_tenant(session=session, name="acme")
    key = create_api_key(session=session, tenant_id=tenant.id)
    first_use = verify_api_key(session=session, presented=key.plaintext).last_used_at
    assert verify_api_key(session=session, presented=key.plaintext).last_used_at == first_use
    key.record.last_used_at = first_use - timedelta(minutes=5)
    session.commit()
    assert verify_api_key(session=session, presented=key.plaintext).last_used_at > first_use
