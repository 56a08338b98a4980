"""Fixtures of the registry tests: databases (SQLite, PostgreSQL), object stores (local, moto S3),
and a tiny real PEFT adapter with its base model's config.json."""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from loraplex.adapter_format.peft import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, BaseModelShape
from loraplex.adapters.local_store import LocalObjectStore
from loraplex.adapters.object_store import ObjectStore
from tests.adapters.support import AdapterFiles, make_s3_store

if TYPE_CHECKING:
    from loraplex.adapters.lifecycle import UploadPolicy

# The GPU machine carries the engine's packages only (torch, transformers, peft, safetensors), not
# the registry's: there, only the cache's GPU test is collected. Elsewhere a missing package must
# fail loudly, so this applies only where CUDA is present.
REGISTRY_PACKAGES = ("sqlalchemy", "alembic", "boto3", "moto", "psycopg", "pydantic_settings")
GPU_TEST_FILE = "test_adapter_cache_gpu.py"
if torch.cuda.is_available() and any(
    importlib.util.find_spec(name) is None for name in REGISTRY_PACKAGES
):
    collect_ignore_glob = [
        path.name for path in Path(__file__).parent.glob("test_*.py") if path.name != GPU_TEST_FILE
    ]

POSTGRES_URL = os.environ.get(
    "LORAPLEX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("LORAPLEX_REQUIRE_POSTGRES") == "1"
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BASE_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 64,
}
RANK = 4


def _postgres_answers() -> bool:
    import psycopg

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.OperationalError:
        return False
    return True


@pytest.fixture(scope="session")
def postgres_available() -> bool:
    return _postgres_answers()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path, postgres_available) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh schema in the shared PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    if not postgres_available:
        message = f"no PostgreSQL server answers at {POSTGRES_URL}"
        if REQUIRE_POSTGRES:
            pytest.fail(message + " (LORAPLEX_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    import psycopg

    schema = f"lpx_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in POSTGRES_URL else "?"
    try:
        # Other runs share the database; a private schema first on the search path isolates us.
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def migrated_url(database_url) -> str:
    from loraplex.adapters import migrate

    migrate.upgrade(database_url)
    return database_url


@pytest.fixture
def session_factory(migrated_url):
    from loraplex.platform.db import create_db_engine, create_session_factory

    engine = create_db_engine(migrated_url)
    try:
        yield create_session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture
def session(session_factory):
    with session_factory() as session:
        yield session


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "objects")
    return make_s3_store(request.getfixturevalue("moto_endpoint"))


@pytest.fixture
def local_store(tmp_path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


@pytest.fixture(scope="session")
def peft_adapter(tmp_path_factory) -> AdapterFiles:
    """A real adapter saved by PEFT for a tiny Llama (rank 4, every supported module)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("peft")
    config = LlamaConfig(**BASE_CONFIG)
    config.save_pretrained(root / "base")
    model = get_peft_model(
        LlamaForCausalLM(config),
        LoraConfig(r=RANK, lora_alpha=8, target_modules=TARGET_MODULES, init_lora_weights=False),
    )
    model.save_pretrained(root / "adapter", safe_serialization=True)
    folder = root / "adapter"
    return AdapterFiles(
        folder,
        (folder / ADAPTER_CONFIG_FILE).read_bytes(),
        (folder / ADAPTER_WEIGHTS_FILE).read_bytes(),
    )


@pytest.fixture(scope="session")
def base_config_path(peft_adapter) -> Path:
    return peft_adapter.folder.parent / "base" / "config.json"


@pytest.fixture(scope="session")
def base_shape(base_config_path) -> BaseModelShape:
    return BaseModelShape.from_config_file(base_config_path)


@pytest.fixture
def policy(base_shape) -> UploadPolicy:
    from loraplex.adapters.lifecycle import UploadPolicy

    return UploadPolicy(
        base_model="tiny-llama", base_shape=base_shape, max_rank=64, max_upload_bytes=10_000_000
    )
