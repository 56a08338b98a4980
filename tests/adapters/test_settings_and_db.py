from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from loraplex.platform.db import create_db_engine, normalize_database_url
from loraplex.platform.settings import Settings, get_settings


def test_defaults_derive_from_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("DATA_DIR", "DATABASE_URL", "OBJECT_STORE_URL", "ADAPTER_CACHE_DIR"):
        monkeypatch.delenv(f"LORAPLEX_{name}", raising=False)
    settings = Settings()
    data = (tmp_path / "data").resolve()
    assert settings.data_dir == data
    assert settings.database_url == f"sqlite:///{data / 'loraplex.db'}"
    assert settings.object_store_url == (data / "objects").as_uri()
    assert settings.adapter_cache_dir == data / "adapter-cache"
    assert settings.max_lora_rank == 64


def test_environment_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAPLEX_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("LORAPLEX_OBJECT_STORE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("LORAPLEX_MAX_LORA_RANK", "16")
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert settings.object_store_url == "s3://bucket/prefix"
        assert settings.max_lora_rank == 16
        assert settings.database_url.endswith("elsewhere/loraplex.db")
        assert get_settings() is settings
    finally:
        get_settings.cache_clear()


def test_invalid_setting_is_refused(monkeypatch):
    monkeypatch.setenv("LORAPLEX_ADAPTER_DISK_CACHE_BYTES", "0")
    with pytest.raises(ValueError, match="adapter_disk_cache_bytes"):
        Settings()


def test_postgres_urls_use_psycopg():
    assert normalize_database_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_database_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_database_url("sqlite:///x.db").drivername == "sqlite"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "not a url"])
def test_unsupported_urls_are_refused(url):
    with pytest.raises(ValueError, match="database"):
        normalize_database_url(url)


def test_sqlite_engine_uses_wal_and_foreign_keys(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'nested' / 'x.db'}")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert Path(tmp_path / "nested" / "x.db").exists()
    finally:
        engine.dispose()


def test_in_memory_sqlite_shares_one_database():
    engine = create_db_engine("sqlite://")
    try:
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM t")).scalar() == 0
    finally:
        engine.dispose()
