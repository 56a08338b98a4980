"""`loraplex admin create-tenant / create-key` and the admin-key bootstrap of `loraplex serve`,
against a database of their own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loraplex.adapters.api_keys import verify_api_key
from loraplex.adapters.tenants import get_tenant_by_name
from loraplex.platform.bootstrap import prepare_service
from loraplex.platform.db import create_db_engine, create_session_factory
from loraplex.platform.settings import Settings

# The console script's entry point, run with this interpreter (the venv's `loraplex`).
CLI = "import sys; from loraplex.platform.cli import main; sys.exit(main())"


def loraplex(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LORAPLEX_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_create_tenant_and_key_for_scripts(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    created = loraplex(
        "admin", "create-tenant", "scripted", "--requests-per-minute", "7", database_url=url
    )
    assert created.returncode == 0, created.stderr
    tenant_id = int(created.stdout.strip())
    duplicate = loraplex("admin", "create-tenant", "scripted", database_url=url)
    assert duplicate.returncode == 2 and "already exists" in duplicate.stderr

    by_name = loraplex("admin", "create-key", "scripted", "--name", "deploy", database_url=url)
    by_id = loraplex("admin", "create-key", str(tenant_id), database_url=url)
    assert by_name.returncode == by_id.returncode == 0
    unknown = loraplex("admin", "create-key", "nobody", database_url=url)
    assert unknown.returncode == 2 and "not found" in unknown.stderr

    engine = create_db_engine(url)
    with create_session_factory(engine)() as session:
        tenant = get_tenant_by_name(session=session, name="scripted")
        assert tenant.id == tenant_id and tenant.requests_per_minute == 7
        for output in (by_name.stdout, by_id.stdout):
            key = verify_api_key(session=session, presented=output.strip())
            assert key is not None and key.tenant_id == tenant_id
    engine.dispose()


def test_bootstrap_makes_an_admin_key_once(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    key = prepare_service(settings)
    assert key is not None and key.startswith("lpx_")
    assert (tmp_path / "data" / "loraplex.db").is_file()
    assert prepare_service(settings) is None  # never printed twice
    engine = create_db_engine(settings.database_url)
    with create_session_factory(engine)() as session:
        record = verify_api_key(session=session, presented=key)
        assert record is not None and record.role == "admin"
    engine.dispose()


def test_bootstrap_installs_the_configured_admin_key(tmp_path):
    chosen = "lpx_" + "k" * 40
    settings = Settings(data_dir=tmp_path / "data", admin_key=chosen)
    assert prepare_service(settings) is None
    assert prepare_service(settings) is None  # idempotent
    engine = create_db_engine(settings.database_url)
    with create_session_factory(engine)() as session:
        assert verify_api_key(session=session, presented=chosen).role == "admin"
    engine.dispose()
    with pytest.raises(ValueError, match="LORAPLEX_ADMIN_KEY"):
        prepare_service(Settings(data_dir=tmp_path / "data", admin_key="short"))
