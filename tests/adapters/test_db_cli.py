"""`loraplex db upgrade|downgrade` applies the migrations to the configured database."""

import sqlalchemy

from loraplex.platform.cli import main


def test_db_upgrade_then_downgrade(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["db", "upgrade", "--database-url", url]) == 0
    tables = set(sqlalchemy.inspect(sqlalchemy.create_engine(url)).get_table_names())
    assert {"tenants", "api_keys", "adapters", "adapter_versions", "usage"} <= tables
    assert "revision 0001" in capsys.readouterr().out
    assert main(["db", "downgrade", "--database-url", url]) == 0
    tables = set(sqlalchemy.inspect(sqlalchemy.create_engine(url)).get_table_names())
    assert not {"tenants", "adapters"} & tables
