"""Alembic environment: the database URL from the caller or the settings, the metadata from the
registry's ORM models, so that autogenerate compares against the code."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from loraplex.adapters.models import Base, UtcDateTime
from loraplex.platform.db import create_db_engine

config = context.config
if config.config_file_name is not None:  # the `alembic` command with alembic.ini
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    # loraplex.adapters.migrate passes the URL as an attribute, which skips the ini file's
    # %-interpolation (URLs may carry %-escapes).
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from loraplex.platform.settings import get_settings

    return get_settings().database_url


def _render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    # Migrations spell the plain column type, so they never import application code.
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_db_engine(_database_url())
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        compare_type=True,
        render_item=_render_item,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations()
