from __future__ import annotations

import pytest

from loraplex.adapters.errors import ConflictError, NotFoundError
from loraplex.adapters.models import STATUS_DELETED
from loraplex.adapters.registry import (
    create_adapter_version,
    get_adapter,
    get_adapter_version,
    list_adapter_versions,
    list_adapters,
    mark_adapter_deleted,
    mark_version_deleted,
    parse_adapter_reference,
    referenced_object_prefixes,
    reserve_adapter,
    resolve_adapter,
    validate_name,
)
from loraplex.adapters.tenants import create_tenant
from tests.adapters.registry_helpers import record_version


@pytest.fixture
def tenant(session):
    return create_tenant(session=session, name="acme")


def test_reserve_allocate_create_and_list(session, tenant):
    adapter = reserve_adapter(session=session, tenant_id=tenant.id, name="bot", base_model="m")
    assert (
        reserve_adapter(session=session, tenant_id=tenant.id, name="bot", base_model="m").id
        == adapter.id
    )
    first, second = (
        record_version(session, tenant.id, "bot"),
        record_version(session, tenant.id, "bot"),
    )
    assert (first.version, second.version) == (1, 2)
    assert second.object_key == f"tenants/{tenant.id}/adapters/{adapter.id}/v2/"
    assert second.target_modules == ["q_proj", "v_proj"] and second.created_at.tzinfo is not None
    assert get_adapter_version(session=session, version_id=first.id).sha256 == "a" * 64
    assert [v.version for v in list_adapter_versions(session=session, adapter_id=adapter.id)] == [
        1,
        2,
    ]
    reserve_adapter(session=session, tenant_id=tenant.id, name="alpha", base_model="m")
    assert [a.name for a in list_adapters(session=session, tenant_id=tenant.id)] == ["alpha", "bot"]
    assert referenced_object_prefixes(session=session) == {first.object_key, second.object_key}


def test_duplicate_version_conflicts(session, tenant):
    adapter = reserve_adapter(session=session, tenant_id=tenant.id, name="bot", base_model="m")
    version = record_version(session, tenant.id, "bot")
    with pytest.raises(ConflictError, match="already exists"):
        create_adapter_version(
            session=session,
            adapter_id=adapter.id,
            version=version.version,
            rank=8,
            alpha=16.0,
            use_rslora=False,
            target_modules=["q_proj"],
            size_bytes=1,
            sha256="c" * 64,
            config_sha256="d" * 64,
            object_key="tenants/x/other/",
        )


def test_soft_delete(session, tenant):
    adapter = reserve_adapter(session=session, tenant_id=tenant.id, name="bot", base_model="m")
    first, second = (
        record_version(session, tenant.id, "bot"),
        record_version(session, tenant.id, "bot"),
    )
    assert mark_version_deleted(session=session, version=second) == second.object_key
    assert resolve_adapter(session=session, tenant_id=tenant.id, reference="bot").id == first.id
    assert referenced_object_prefixes(session=session) == {first.object_key}
    assert mark_adapter_deleted(session=session, adapter=adapter) == [
        first.object_key,
        second.object_key,
    ]
    assert first.status == STATUS_DELETED
    with pytest.raises(NotFoundError):
        get_adapter(session=session, tenant_id=tenant.id, name="bot")
    assert (
        get_adapter(session=session, tenant_id=tenant.id, name="bot", include_deleted=True).id
        == adapter.id
    )
    assert [
        a.name for a in list_adapters(session=session, tenant_id=tenant.id, include_deleted=True)
    ] == ["bot"]
    assert referenced_object_prefixes(session=session) == set()


def test_resolve_needs_a_ready_version(session, tenant):
    reserve_adapter(session=session, tenant_id=tenant.id, name="empty", base_model="m")
    with pytest.raises(NotFoundError, match="'empty' not found"):
        resolve_adapter(session=session, tenant_id=tenant.id, reference="empty")
    with pytest.raises(NotFoundError):
        resolve_adapter(session=session, tenant_id=tenant.id, reference="absent:1")


@pytest.mark.parametrize(
    ("reference", "expected"),
    [("bot", ("bot", None)), ("bot:3", ("bot", 3)), ("my.bot-v2_x:12", ("my.bot-v2_x", 12))],
)
def test_references_parse(reference, expected):
    assert parse_adapter_reference(reference) == expected


@pytest.mark.parametrize(
    "reference", ["bot:", "bot:0", "bot:-1", "bot:x", "bot:1:2", "Bot", ":3", "bot:٣"]
)
def test_bad_references_are_refused(reference):
    with pytest.raises(ValueError):
        parse_adapter_reference(reference)


@pytest.mark.parametrize("name", ["a", "0", "a" * 64, "support-bot.v2_final"])
def test_good_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", [None, 3, "", "a" * 65, "UPPER", "_x", ".x", "a/b", "a b", "é"])
def test_bad_names(name):
    with pytest.raises(ValueError, match="adapter name"):
        validate_name(name)
