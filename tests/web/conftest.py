"""Fixtures of the dashboard tests: one real server (the tiny Llama on the CPU, as in the
platform tests), signed-in dashboard users, and tenants made through the admin API."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import httpx
import pytest

from tests.adapters.conftest import (  # noqa: F401 (fixtures of the registry's databases)
    database_url,
    migrated_url,
    postgres_available,
    session,
    session_factory,
)
from tests.platform.conftest import (  # noqa: F401 (fixtures)
    Platform,
    TenantAccount,
    create_tenant,
    model_dir,
    peft_adapters,
    start_platform,
)
from tests.web.browser import SCREENSHOTS, browser_page, chromium_missing, screenshot
from tests.web.dashboard_client import DashboardUser

_names = itertools.count()


def unique_name(stem: str) -> str:
    return f"{stem}-{next(_names)}"


@pytest.fixture(scope="session")
def web_platform(tmp_path_factory, model_dir, test_device) -> Iterator[Platform]:  # noqa: F811
    running = start_platform(tmp_path_factory.mktemp("web"), model_dir, test_device)
    yield running
    running.server.stop()


@pytest.fixture(scope="session")
def api(web_platform) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=web_platform.url, timeout=60) as client:
        yield client


@pytest.fixture
def anonymous(web_platform) -> Iterator[DashboardUser]:
    user = DashboardUser(web_platform.url)
    yield user
    user.close()


@pytest.fixture
def admin(web_platform) -> Iterator[DashboardUser]:
    user = DashboardUser(web_platform.url)
    assert user.sign_in(web_platform.admin_key).status == 303
    yield user
    user.close()


@pytest.fixture
def tenant(api, web_platform) -> TenantAccount:
    return create_tenant(api, web_platform)


@pytest.fixture
def page(request, web_platform):
    """A headless Chromium page; a failing test leaves a screenshot of where it stopped."""
    missing = chromium_missing()
    if missing:
        pytest.fail(missing)
    failure = f"failed-{request.node.name}"
    (SCREENSHOTS / f"{failure}.png").unlink(missing_ok=True)
    with browser_page() as page:
        yield page
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            screenshot(page, failure)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
