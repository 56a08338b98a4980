"""Run the registry's Alembic migrations from code (what `loraplex db upgrade` calls).

The migration scripts live in `migrations/` at the repository root, next to the package (the
package is installed editable from a source checkout); `LORAPLEX_MIGRATIONS_DIR` overrides that.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from loraplex.platform.db import create_db_engine


def migrations_dir() -> Path:
    override = os.environ.get("LORAPLEX_MIGRATIONS_DIR")
    folder = Path(override) if override else Path(__file__).resolve().parents[2] / "migrations"
    if not (folder / "env.py").is_file():
        raise FileNotFoundError(
            f"Alembic migrations not found at {folder}; run from a source checkout or set "
            "LORAPLEX_MIGRATIONS_DIR"
        )
    return folder


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic Config for the registry, bound to `database_url` (settings when None)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database at `database_url` up to `revision` (the newest by default)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Migrate down to `revision` ("base" removes every registry table: all data is lost)."""
    command.downgrade(alembic_config(database_url), revision)


def head_revisions() -> tuple[str, ...]:
    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revision(database_url: str) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    engine = create_db_engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
