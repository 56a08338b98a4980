"""Schemathesis against the app's own OpenAPI document, for the admin and adapter endpoints:
whatever it generates, valid or not, the server never answers with a 5xx.

It runs on a server of its own: generated calls disable tenants and revoke keys at random."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from loraplex.platform.app import create_app
from loraplex.platform.settings import Settings
from tests.platform.conftest import create_tenant, start_platform

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def fuzzed_platform(tmp_path_factory, model_dir, test_device):
    running = start_platform(tmp_path_factory.mktemp("fuzzed"), model_dir, test_device)
    with httpx.Client(base_url=running.url, timeout=60) as http:
        tenant = create_tenant(http, running)
    yield running, tenant
    running.server.stop()


def _openapi_document() -> dict:
    """The document the server serves at /openapi.json (building the app starts nothing)."""
    return create_app(Settings(data_dir=Path(tempfile.gettempdir()) / "unused")).openapi()


schema = schemathesis.openapi.from_dict(_openapi_document())


@schema.include(path_regex=r"^/(admin/v1/|v1/adapters)").parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_admin_and_adapter_endpoints_never_answer_5xx(case, fuzzed_platform):
    platform, tenant = fuzzed_platform
    served = httpx.get(f"{platform.url}/openapi.json").json()
    assert served["paths"].keys() == schema.raw_schema["paths"].keys()
    admin = case.path.startswith("/admin/")
    key = platform.admin_key if admin else tenant.key
    response = case.call(base_url=platform.url, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code < 500, (case.method, case.path, response.text)
    if response.status_code >= 400:
        assert response.json()["error"]["message"]
