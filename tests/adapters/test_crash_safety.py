"""An upload killed between its object writes and its row commit leaves an orphan, never a row
without bytes; the sweeper removes orphans once they are older than the grace period."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timedelta

from sqlalchemy import select

from loraplex.adapters.lifecycle import sweep_orphans
from loraplex.adapters.local_store import LocalObjectStore
from loraplex.adapters.models import STATUS_READY, AdapterVersion, utcnow
from loraplex.adapters.registry import mark_version_deleted
from loraplex.adapters.tenants import create_tenant
from tests.adapters.registry_helpers import upload

CRASHING_UPLOAD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path

    from loraplex.adapters.lifecycle import UploadPolicy, upload_adapter_version
    from loraplex.adapters.object_store import open_object_store
    from loraplex.adapter_format.peft import BaseModelShape
    from loraplex.adapters.staging import UploadedFile
    from loraplex.platform.db import create_db_engine, create_session_factory

    database_url, store_url, adapter_dir, base_config, tenant_id = sys.argv[1:]
    store = open_object_store(store_url)
    real_put = store.put

    def put_then_die(key, source):
        real_put(key, source)
        if key.endswith("adapter_model.safetensors"):
            os._exit(17)  # the process dies after the last object write, before the commit

    store.put = put_then_die
    shape = BaseModelShape.from_config_file(Path(base_config))
    policy = UploadPolicy("tiny-llama", shape, 64, 10**8)
    folder = Path(adapter_dir)
    files = [
        UploadedFile("adapter_config.json", open(folder / "adapter_config.json", "rb")),
        UploadedFile("adapter_model.safetensors", open(folder / "adapter_model.safetensors", "rb")),
    ]
    with create_session_factory(create_db_engine(database_url))() as session:
        upload_adapter_version(
            session=session, store=store, tenant_id=int(tenant_id), name="support-bot",
            files=files, policy=policy,
        )
    sys.exit(0)
    """
)


def _store_url(store, moto_endpoint_getter) -> str:
    if isinstance(store, LocalObjectStore):
        return store.url
    return (
        f"s3://{store.bucket}/{store.prefix}?endpoint_url={moto_endpoint_getter()}&region=us-east-1"
    )


def _rows_without_bytes(session, store) -> list[str]:
    missing = []
    for row in session.scalars(select(AdapterVersion).where(AdapterVersion.status == STATUS_READY)):
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if not store.exists(row.object_key + name):
                missing.append(row.object_key + name)
    return missing


def test_upload_killed_before_commit_leaves_only_an_orphan(
    request, migrated_url, session, store, policy, peft_adapter, base_config_path
):
    tenant = create_tenant(session=session, name="acme")
    store_url = _store_url(store, lambda: request.getfixturevalue("moto_endpoint"))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASHING_UPLOAD,
            migrated_url,
            store_url,
            str(peft_adapter.folder),
            str(base_config_path),
            str(tenant.id),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 17, result.stderr

    orphans = [info.key for info in store.list()]
    assert len(orphans) == 2 and all(key.startswith("tenants/") for key in orphans)
    assert session.scalars(select(AdapterVersion)).all() == []
    assert _rows_without_bytes(session, store) == []

    # Life goes on: the next upload gets a fresh number and its own prefix.
    good = upload(session, store, tenant.id, policy, peft_adapter, "support-bot")
    assert good.version == 2
    assert _rows_without_bytes(session, store) == []

    # Within the grace period nothing is swept (an upload might still be about to commit).
    assert sweep_orphans(session=session, store=store) == []
    swept = sweep_orphans(session=session, store=store, now=utcnow() + timedelta(hours=2))
    assert sorted(swept) == sorted(orphans)
    assert sorted(info.key for info in store.list()) == [
        good.object_key + "adapter_config.json",
        good.object_key + "adapter_model.safetensors",
    ]
    assert _rows_without_bytes(session, store) == []


def test_sweeper_removes_bytes_of_deleted_rows_and_ignores_other_prefixes(
    session, store, policy, peft_adapter
):
    tenant = create_tenant(session=session, name="acme")
    kept = upload(session, store, tenant.id, policy, peft_adapter, "kept")
    dropped = upload(session, store, tenant.id, policy, peft_adapter, "dropped")
    # A crash after marking the row deleted but before removing its objects:
    mark_version_deleted(session=session, version=dropped)
    store.put("exports/report.csv", b"not registry data")

    swept = sweep_orphans(
        session=session, store=store, grace=timedelta(0), now=utcnow() + timedelta(seconds=5)
    )
    assert sorted(swept) == [
        dropped.object_key + "adapter_config.json",
        dropped.object_key + "adapter_model.safetensors",
    ]
    assert store.exists(kept.object_key + "adapter_model.safetensors")
    assert store.exists("exports/report.csv")
