"""Database engine and session factory from a URL.

The same code runs on SQLite (embedded default) and PostgreSQL. SQLite gets write-ahead logging
so that readers never block the single writer, foreign keys enforced (off by default there), and a
busy timeout so that concurrent writers wait instead of failing at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_database_url(url: str | URL) -> URL:
    """Parse `url`, mapping plain `postgresql://` and `postgres://` to the psycopg (v3) driver."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ValueError(f"invalid database URL: {exc}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {backend!r}: use a sqlite:// or postgresql:// URL")
    return parsed


def create_db_engine(url: str | URL, **engine_kwargs: Any) -> Engine:
    """An Engine for `url`; SQLite files get their parent folder created and WAL turned on."""
    parsed = normalize_database_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine_kwargs.setdefault("pool_pre_ping", True)
        return create_engine(parsed, **engine_kwargs)

    connect_args = engine_kwargs.setdefault("connect_args", {})
    # Sessions are handed between threads (request handlers, cache workers); each connection is
    # still used by one thread at a time through the pool.
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    in_memory = parsed.database in (None, "", ":memory:")
    if in_memory:
        # Every connection to ":memory:" is a new empty database; share one connection instead.
        engine_kwargs.setdefault("poolclass", StaticPool)
    else:
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, **engine_kwargs)
    event.listen(engine, "connect", _sqlite_pragmas(wal=not in_memory))
    return engine


def _sqlite_pragmas(*, wal: bool):
    def set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if wal:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    return set_pragmas


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions whose loaded objects stay readable after commit (no lazy reload per attribute)."""
    return sessionmaker(bind=engine, expire_on_commit=False)
