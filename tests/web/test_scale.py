"""The pages at 1,000 tenants and 10,000 adapters: a page at a time, searchable, with a number
of SQL statements per page that does not grow with the registry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, insert, select

from loraplex.adapters.models import Adapter, AdapterVersion, Tenant, UsageRecord
from tests.platform.conftest import Platform, start_platform
from tests.web.dashboard_client import DashboardUser

TENANTS = 1000
ADAPTERS_PER_TENANT = 10
MAX_STATEMENTS_PER_PAGE = 10


def _seed(platform: Platform) -> None:
    """Rows written in bulk (no objects behind the versions: they are "store only")."""
    state = platform.server.state
    now = datetime.now(UTC)
    with state.sessions() as session:
        session.execute(
            insert(Tenant),
            [{"name": f"scale-{i:04d}", "created_at": now} for i in range(TENANTS)],
        )
        tenant_ids = dict(session.execute(select(Tenant.name, Tenant.id)).all())
        session.execute(
            insert(Adapter),
            [
                {
                    "tenant_id": tenant_ids[f"scale-{i:04d}"],
                    "name": f"adapter-{j:02d}",
                    "base_model": "tiny-llama",
                    "created_at": now,
                    "next_version": 2,
                }
                for i in range(TENANTS)
                for j in range(ADAPTERS_PER_TENANT)
            ],
        )
        adapters = session.execute(select(Adapter.id, Adapter.tenant_id)).all()
        session.execute(
            insert(AdapterVersion),
            [
                {
                    "adapter_id": adapter_id,
                    "version": 1,
                    "rank": 8,
                    "alpha": 16.0,
                    "use_rslora": False,
                    "target_modules": ["q_proj", "v_proj"],
                    "size_bytes": 1000 + adapter_id,
                    "sha256": "a" * 64,
                    "config_sha256": "b" * 64,
                    "object_key": f"tenants/{tenant_id}/adapters/{adapter_id}/v1/",
                    "status": "ready",
                    "created_at": now,
                }
                for adapter_id, tenant_id in adapters
            ],
        )
        session.execute(
            insert(UsageRecord),
            [
                {
                    "tenant_id": tenant_id,
                    "prompt_tokens": 10,
                    "completion_tokens": 5,
                    "created_at": now,
                }
                for tenant_id in tenant_ids.values()
            ],  # fmt: skip
        )
        session.commit()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, model_dir, test_device) -> Iterator[Platform]:
    platform = start_platform(tmp_path_factory.mktemp("scale"), model_dir, test_device)
    _seed(platform)
    yield platform
    platform.server.stop()


@pytest.fixture(scope="module")
def user(seeded) -> Iterator[DashboardUser]:
    user = DashboardUser(seeded.url)
    assert user.sign_in(seeded.admin_key).status == 303
    yield user
    user.close()


@contextmanager
def counted_statements(platform: Platform) -> Iterator[list[str]]:
    statements: list[str] = []
    engine = platform.server.state.db_engine

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_tenants_page_pages_and_searches_a_thousand(user, seeded):
    with counted_statements(seeded) as statements:
        first = user.get("/dashboard/tenants")
    assert first.status == 200
    assert len(statements) <= MAX_STATEMENTS_PER_PAGE, statements
    rows = first.soup.select("[data-tenant-row]")
    assert len(rows) == 50 and rows[0]["data-tenant-row"] == "scale-0000"
    assert first.one("[data-pager]")["data-pager-total"] == str(TENANTS)
    assert rows[0].select_one("[data-adapters-count]")["data-adapters-count"] == "10"
    assert rows[0].select_one("[data-usage-tokens]")["data-usage-tokens"] == "15"
    assert first.soup.select("[data-page-link=previous]") == []

    last = user.get(first.one("[data-page-link=next]")["href"].replace("page=2", "page=20"))
    names = [r["data-tenant-row"] for r in last.soup.select("[data-tenant-row]")]
    assert names[0] == "scale-0950" and names[-1] == "scale-0999"
    assert last.soup.select("[data-page-link=next]") == []
    beyond = user.get("/dashboard/tenants?page=21")
    assert beyond.status == 200 and beyond.soup.select("[data-tenant-row]") == []

    found = user.get("/dashboard/tenants?q=scale-042")
    assert [r["data-tenant-row"] for r in found.soup.select("[data-tenant-row]")] == [
        f"scale-042{i}" for i in range(10)
    ]


def test_adapters_page_pages_and_searches_ten_thousand(user, seeded):
    with counted_statements(seeded) as statements:
        first = user.get("/dashboard/adapters")
    assert first.status == 200
    assert len(statements) <= MAX_STATEMENTS_PER_PAGE, statements
    assert len(first.soup.select("[data-adapter-row]")) == 50
    assert first.one("[data-pager]")["data-pager-total"] == str(TENANTS * ADAPTERS_PER_TENANT)
    assert {c["data-cached"] for c in first.soup.select("[data-cached]")} == {"store"}

    by_name = user.get("/dashboard/adapters?q=adapter-07&page=3")
    assert by_name.one("[data-pager]")["data-pager-total"] == str(TENANTS)
    rows = [r["data-adapter-row"] for r in by_name.soup.select("[data-adapter-row]")]
    assert rows[0] == "scale-0100/adapter-07" and len(rows) == 50

    qualified = user.get("/dashboard/adapters?q=scale-0999/adapter-0")
    assert len(qualified.soup.select("[data-adapter-row]")) == ADAPTERS_PER_TENANT


def test_tenant_page_of_a_large_registry(user, seeded):
    found = user.get("/dashboard/tenants?q=scale-0500")
    link = found.one("[data-tenant-link]")["href"]
    with counted_statements(seeded) as statements:
        page = user.get(link)
    assert page.status == 200
    assert len(statements) <= MAX_STATEMENTS_PER_PAGE, statements
    assert len(page.soup.select("[data-adapter-row]")) == ADAPTERS_PER_TENANT
    assert float(page.one('[data-chart="usage"]')["data-total"]) == 15


def test_admin_api_pages_the_same_listing(seeded):
    import httpx

    headers = {"Authorization": f"Bearer {seeded.admin_key}"}
    with httpx.Client(base_url=seeded.url, headers=headers) as api:
        tail = api.get("/admin/v1/adapters", params={"limit": 50, "offset": 9990}).json()["data"]
        assert [(a["tenant_name"], a["name"]) for a in tail][-1] == ("scale-0999", "adapter-09")
        assert len(tail) == 10 and all(a["versions"][0]["version_id"] for a in tail)
        tenants = api.get("/admin/v1/tenants", params={"search": "scale-09", "limit": 5}).json()
        assert [t["name"] for t in tenants["data"]] == [f"scale-090{i}" for i in range(5)]
        assert api.get("/admin/v1/tenants", params={"limit": 501}).status_code == 400
        assert api.get("/admin/v1/adapters", params={"search": "a b"}).status_code == 400
