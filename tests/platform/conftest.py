"""One real server for the platform tests: the tiny Llama on the CPU, SQLite and a local object
store in a temporary folder, an admin key; tenants and adapters are made per test."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from loraplex.platform.bootstrap import prepare_service
from loraplex.platform.settings import Settings
from tests.platform.server import RunningServer

MAX_MODEL_LEN = 256
ADAPTER_RANK_LIMIT = 16
UPLOAD_LIMIT_BYTES = 4 * 1024 * 1024
_names = itertools.count()


def platform_settings(data_dir: Path, model_dir: str, device: str, **overrides) -> Settings:
    values = dict(
        data_dir=data_dir,
        model=model_dir,
        served_model_name="tiny-llama",
        device=device,
        dtype="float32",
        max_model_len=MAX_MODEL_LEN,
        max_lora_rank=ADAPTER_RANK_LIMIT,
        max_loras=2,
        max_cpu_loras=4,
        max_num_seqs=32,
        max_waiting_requests=64,
        max_upload_bytes=UPLOAD_LIMIT_BYTES,
        max_n=4,
    )
    values.update(overrides)
    return Settings(**values)


@dataclass(frozen=True)
class Platform:
    server: RunningServer
    admin_key: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}


def start_platform(data_dir: Path, model_dir: str, device: str, **overrides) -> Platform:
    settings = platform_settings(data_dir, model_dir, device, **overrides)
    admin_key = prepare_service(settings)
    assert admin_key is not None
    return Platform(RunningServer(settings).start(), admin_key)


@pytest.fixture(scope="session")
def model_dir(tiny_model_dirs) -> str:
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="session")
def platform(tmp_path_factory, model_dir, test_device) -> Iterator[Platform]:
    running = start_platform(tmp_path_factory.mktemp("platform"), model_dir, test_device)
    yield running
    running.server.stop()


@pytest.fixture(scope="session")
def http(platform) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=platform.url, timeout=60) as client:
        yield client


@dataclass(frozen=True)
class TenantAccount:
    id: int
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def create_tenant(http: httpx.Client, platform: Platform, **quotas) -> TenantAccount:
    name = f"tenant-{next(_names)}"
    response = http.post(
        "/admin/v1/tenants", json={"name": name, **quotas}, headers=platform.admin_headers
    )
    assert response.status_code == 201, response.text
    tenant_id = response.json()["id"]
    key = http.post(f"/admin/v1/tenants/{tenant_id}/keys", headers=platform.admin_headers)
    assert key.status_code == 201, key.text
    return TenantAccount(tenant_id, name, key.json()["key"])


@pytest.fixture
def tenant(http, platform) -> TenantAccount:
    return create_tenant(http, platform)


@pytest.fixture
def make_tenant(http, platform):
    return lambda **quotas: create_tenant(http, platform, **quotas)


@dataclass(frozen=True)
class AdapterFolder:
    path: Path

    @property
    def config(self) -> bytes:
        return (self.path / "adapter_config.json").read_bytes()

    @property
    def weights(self) -> bytes:
        return (self.path / "adapter_model.safetensors").read_bytes()

    def multipart(self) -> list[tuple[str, tuple[str, bytes, str]]]:
        return [
            ("files", ("adapter_config.json", self.config, "application/json")),
            ("files", ("adapter_model.safetensors", self.weights, "application/octet-stream")),
        ]


@pytest.fixture(scope="session")
def peft_adapters(tmp_path_factory, model_dir) -> list[AdapterFolder]:
    """Two real PEFT adapters of the tiny Llama (made with peft), rank 8 and 16."""
    from tests.engine.peft_adapters import ADAPTER_SPECS, make_peft_adapter

    root = tmp_path_factory.mktemp("peft")
    folders = []
    for index in (1, 2):
        rank, alpha, targets, rslora = ADAPTER_SPECS[index]
        path = make_peft_adapter(
            model_dir, root / f"adapter{index}", rank, alpha, targets, rslora, seed=200 + index
        )
        assert json.loads((path / "adapter_config.json").read_text())["r"] <= ADAPTER_RANK_LIMIT
        folders.append(AdapterFolder(path))
    return folders


def upload_adapter(
    http: httpx.Client, tenant: TenantAccount, name: str, adapter: AdapterFolder
) -> httpx.Response:
    return http.post(
        "/v1/adapters", data={"name": name}, files=adapter.multipart(), headers=tenant.headers
    )


def openai_client(platform: Platform, key: str):
    import openai

    return openai.OpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0, timeout=60)
