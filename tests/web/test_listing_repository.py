"""The registry's listing queries behind the dashboard and the admin API's pages, on SQLite and
PostgreSQL: search by name, limit and offset in SQL, counts, versions, labels, usage totals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from loraplex.adapters.listing import (
    count_adapters_by_tenant,
    describe_versions,
    normalize_search,
    search_adapters,
    search_tenants,
    tenant_names,
    versions_by_adapter,
)
from loraplex.adapters.registry import get_adapter, mark_adapter_deleted, mark_version_deleted
from loraplex.adapters.tenants import create_tenant
from loraplex.adapters.usage import record_usage, usage_totals_by_tenant
from tests.adapters.registry_helpers import record_version


@pytest.fixture
def registry(session):
    """Tenants acme, acme-labs, zeta; acme has bots a_b, a%b, chat; zeta has chat (deleted v2)."""
    acme = create_tenant(session=session, name="acme")
    labs = create_tenant(session=session, name="acme-labs")
    zeta = create_tenant(session=session, name="zeta")
    versions = {
        "acme/a_b": record_version(session, acme.id, "a_b"),
        "acme/ab": record_version(session, acme.id, "ab"),
        "acme/chat": record_version(session, acme.id, "chat"),
        "zeta/chat": record_version(session, zeta.id, "chat"),
    }
    versions["zeta/chat:2"] = record_version(session, zeta.id, "chat")
    mark_version_deleted(session=session, version=versions["zeta/chat:2"])
    gone = record_version(session, labs.id, "gone")
    mark_adapter_deleted(session=session, adapter=gone.adapter)
    return {"acme": acme, "labs": labs, "zeta": zeta, "versions": versions}


def test_search_tenants_pages_in_id_order(session, registry):
    found = search_tenants(session=session, search="ACME ", limit=1)
    assert [t.name for t in found.items] == ["acme"] and found.total == 2
    second = search_tenants(session=session, search="acme", limit=1, offset=1)
    assert [t.name for t in second.items] == ["acme-labs"]
    everything = search_tenants(session=session, limit=None)
    assert [t.name for t in everything.items] == ["acme", "acme-labs", "zeta"]
    assert search_tenants(session=session, search="nobody").total == 0


def test_search_adapters_by_name_tenant_or_both(session, registry):
    def names(**kwargs) -> list[str]:
        found = search_adapters(session=session, limit=50, **kwargs)
        labels = tenant_names(session=session, tenant_ids={a.tenant_id for a in found.items})
        return [f"{labels[a.tenant_id]}/{a.name}" for a in found.items]

    assert names() == ["acme/a_b", "acme/ab", "acme/chat", "zeta/chat"]  # deleted ones left out
    assert names(search="chat") == ["acme/chat", "zeta/chat"]
    assert names(search="zeta") == ["zeta/chat"]  # the tenant's name matches too
    assert names(search="acme/c") == ["acme/chat"]
    assert names(search="a_b") == ["acme/a_b"]  # "_" is a character, not a wildcard
    assert names(tenant_id=registry["zeta"].id) == ["zeta/chat"]
    page = search_adapters(session=session, limit=2, offset=2)
    assert page.total == 4 and len(page.items) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": True}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": 2**31}, "offset"),
        ({"search": "50%"}, "may contain only"),
        ({"search": "x" * 130}, "at most"),
    ],
)
def test_bad_pages_and_searches_raise_value_error(session, kwargs, message):
    with pytest.raises(ValueError, match=message):
        search_tenants(session=session, **kwargs)
    with pytest.raises(ValueError, match=message):
        search_adapters(session=session, **kwargs)


def test_counts_versions_and_labels(session, registry):
    acme, labs, zeta = registry["acme"], registry["labs"], registry["zeta"]
    counts = count_adapters_by_tenant(session=session, tenant_ids=[acme.id, labs.id, zeta.id])
    assert counts == {acme.id: 3, labs.id: 0, zeta.id: 1}
    assert count_adapters_by_tenant(session=session, tenant_ids=[]) == {}
    chat = get_adapter(session=session, tenant_id=zeta.id, name="chat")
    grouped = versions_by_adapter(session=session, adapter_ids=[chat.id])
    assert [v.version for v in grouped[chat.id]] == [1]  # the deleted version is left out
    deleted = registry["versions"]["zeta/chat:2"]
    labels = describe_versions(session=session, version_ids=[deleted.id, 999_999])
    assert set(labels) == {deleted.id}
    assert labels[deleted.id].reference == "zeta/chat:v2"


def test_usage_totals_by_tenant(session, registry):
    acme, zeta = registry["acme"], registry["zeta"]
    now = datetime.now(UTC)
    version = registry["versions"]["acme/chat"]
    record_usage(session=session, tenant_id=acme.id, adapter_version_id=version.id,
                 prompt_tokens=10, completion_tokens=4, at=now - timedelta(hours=1))  # fmt: skip
    record_usage(session=session, tenant_id=acme.id, adapter_version_id=None,
                 prompt_tokens=3, completion_tokens=2, at=now - timedelta(minutes=5))  # fmt: skip
    record_usage(session=session, tenant_id=acme.id, adapter_version_id=None,
                 prompt_tokens=100, completion_tokens=100, at=now - timedelta(days=2))  # fmt: skip
    totals = usage_totals_by_tenant(
        session=session, start=now - timedelta(days=1), end=now, tenant_ids=[acme.id, zeta.id]
    )
    assert (totals[acme.id].requests, totals[acme.id].tokens) == (2, 19)
    assert totals[zeta.id].requests == 0
    with pytest.raises(ValueError, match="timezone-aware"):
        usage_totals_by_tenant(
            session=session, start=datetime(2020, 1, 1), end=now, tenant_ids=[acme.id]
        )


def test_normalize_search():
    assert normalize_search(None) == "" and normalize_search("  Acme/Bot ") == "acme/bot"
