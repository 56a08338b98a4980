from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from loraplex.adapters import migrate
from loraplex.adapters.models import Base
from loraplex.platform.db import create_db_engine

REGISTRY_TABLES = {"tenants", "api_keys", "adapters", "adapter_versions", "usage"}


def _tables(url: str) -> set[str]:
    engine = create_db_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _schema_diff(url: str) -> list:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_single_head():
    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(script.get_heads()) == 1
    assert migrate.head_revisions() == tuple(script.get_heads())


def test_upgrade_downgrade_upgrade(database_url):
    assert migrate.current_revision(database_url) is None
    migrate.upgrade(database_url)
    assert migrate.current_revision(database_url) == migrate.head_revisions()[0]
    assert _tables(database_url) >= REGISTRY_TABLES

    migrate.downgrade(database_url, "base")
    assert migrate.current_revision(database_url) is None
    assert not REGISTRY_TABLES & _tables(database_url)

    migrate.upgrade(database_url)
    assert _tables(database_url) >= REGISTRY_TABLES


def test_models_match_migrated_schema(migrated_url):
    assert _schema_diff(migrated_url) == []


def test_diff_detects_a_schema_drift(migrated_url):
    # The comparison above must be able to fail: drop an index the models still declare.
    engine = create_db_engine(migrated_url)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP INDEX ix_api_keys_prefix")
    finally:
        engine.dispose()
    assert any("ix_api_keys_prefix" in str(change) for change in _schema_diff(migrated_url))
