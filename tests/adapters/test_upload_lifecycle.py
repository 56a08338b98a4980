from __future__ import annotations

import hashlib
import io
import threading
from types import SimpleNamespace

import pytest

from loraplex.adapters import lifecycle
from loraplex.adapters.errors import (
    ConflictError,
    NotFoundError,
    QuotaExceededError,
    TenantDisabledError,
)
from loraplex.adapters.lifecycle import (
    UploadPolicy,
    delete_adapter,
    delete_adapter_version,
)
from loraplex.adapters.models import STATUS_DELETED, STATUS_READY
from loraplex.adapters.registry import list_adapter_versions, list_adapters, resolve_adapter
from loraplex.adapters.staging import UploadedFile
from loraplex.adapters.tenants import create_tenant, set_tenant_disabled
from tests.adapters.archives import tar_files
from tests.adapters.conftest import RANK, TARGET_MODULES
from tests.adapters.registry_helpers import upload


def _upload(session, store, tenant, policy, adapter, name="support-bot", files=None):
    return upload(session, store, tenant.id, policy, adapter, name, files)


def test_upload_stores_objects_then_row(session, store, policy, peft_adapter):
    tenant = create_tenant(session=session, name="acme")
    version = _upload(session, store, tenant, policy, peft_adapter)
    assert (version.version, version.rank, version.alpha) == (1, RANK, 8.0)
    assert version.status == STATUS_READY and not version.use_rslora
    assert version.target_modules == sorted(TARGET_MODULES)
    assert version.size_bytes == len(peft_adapter.config) + len(peft_adapter.weights)
    assert version.sha256 == hashlib.sha256(peft_adapter.weights).hexdigest()
    assert version.config_sha256 == hashlib.sha256(peft_adapter.config).hexdigest()
    adapter_id = version.adapter.id
    assert version.object_key == f"tenants/{tenant.id}/adapters/{adapter_id}/v1/"
    assert store.get_bytes(version.object_key + "adapter_model.safetensors") == peft_adapter.weights
    assert store.get_bytes(version.object_key + "adapter_config.json") == peft_adapter.config
    assert version.adapter.base_model == "tiny-llama"


def test_versions_resolve_by_name_and_number(session, store, policy, peft_adapter):
    tenant = create_tenant(session=session, name="acme")
    first = _upload(session, store, tenant, policy, peft_adapter)
    archive = tar_files(
        {
            "adapter/adapter_config.json": peft_adapter.config,
            "adapter/adapter_model.safetensors": peft_adapter.weights,
        }
    )
    second = _upload(
        session,
        store,
        tenant,
        policy,
        peft_adapter,
        files=[UploadedFile("a.tar.gz", io.BytesIO(archive))],
    )
    assert second.version == 2 and second.object_key != first.object_key
    assert (
        resolve_adapter(session=session, tenant_id=tenant.id, reference="support-bot").id
        == second.id
    )
    assert (
        resolve_adapter(session=session, tenant_id=tenant.id, reference="support-bot:1").id
        == first.id
    )
    with pytest.raises(NotFoundError):
        resolve_adapter(session=session, tenant_id=tenant.id, reference="support-bot:3")


def test_tenants_are_isolated(session, store, policy, peft_adapter):
    acme = create_tenant(session=session, name="acme")
    other = create_tenant(session=session, name="other")
    _upload(session, store, acme, policy, peft_adapter)
    with pytest.raises(NotFoundError):
        resolve_adapter(session=session, tenant_id=other.id, reference="support-bot")
    mine = _upload(session, store, other, policy, peft_adapter)
    assert mine.version == 1 and mine.object_key.startswith(f"tenants/{other.id}/")


def test_adapter_quota(session, store, policy, peft_adapter):
    tenant = create_tenant(session=session, name="acme", max_adapters=1)
    _upload(session, store, tenant, policy, peft_adapter, name="first")
    keys_before = [info.key for info in store.list()]
    with pytest.raises(QuotaExceededError, match="maximum of 1 adapters"):
        _upload(session, store, tenant, policy, peft_adapter, name="second")
    assert [info.key for info in store.list()] == keys_before
    assert [a.name for a in list_adapters(session=session, tenant_id=tenant.id)] == ["first"]
    assert _upload(session, store, tenant, policy, peft_adapter, name="first").version == 2


def test_platform_limits_apply(session, store, base_shape, peft_adapter):
    tenant = create_tenant(session=session, name="acme", max_upload_bytes=10**9)
    tight = UploadPolicy("tiny-llama", base_shape, max_rank=2, max_upload_bytes=10**9)
    with pytest.raises(ValueError, match="r=4 exceeds the platform maximum of 2"):
        _upload(session, store, tenant, tight, peft_adapter)
    small = UploadPolicy("tiny-llama", base_shape, max_rank=64, max_upload_bytes=1000)
    with pytest.raises(QuotaExceededError, match="size limit of 1000 bytes"):
        _upload(session, store, tenant, small, peft_adapter)


def test_disabled_or_unknown_tenant_cannot_upload(session, store, policy, peft_adapter):
    tenant = create_tenant(session=session, name="acme")
    set_tenant_disabled(session=session, tenant_id=tenant.id)
    with pytest.raises(TenantDisabledError):
        _upload(session, store, tenant, policy, peft_adapter)
    with pytest.raises(NotFoundError):
        _upload(session, store, SimpleNamespace(id=9999), policy, peft_adapter)


def test_base_model_mismatch_conflicts(session, store, policy, base_shape, peft_adapter):
    tenant = create_tenant(session=session, name="acme")
    _upload(session, store, tenant, policy, peft_adapter)
    other_base = UploadPolicy("other-base", base_shape, 64, 10**9)
    with pytest.raises(ConflictError, match="made for base model 'tiny-llama'"):
        _upload(session, store, tenant, other_base, peft_adapter)


def test_delete_version_marks_row_then_removes_objects(session, store, policy, peft_adapter):
    tenant = create_tenant(session=session, name="acme")
    first = _upload(session, store, tenant, policy, peft_adapter)
    second = _upload(session, store, tenant, policy, peft_adapter)
    deleted = delete_adapter_version(
        session=session, store=store, tenant_id=tenant.id, name="support-bot", version=2
    )
    assert deleted.status == STATUS_DELETED and deleted.deleted_at is not None
    assert list(store.list(second.object_key)) == []
    assert len(list(store.list(first.object_key))) == 2
    assert (
        resolve_adapter(session=session, tenant_id=tenant.id, reference="support-bot").id
        == first.id
    )
    with pytest.raises(NotFoundError):
        resolve_adapter(session=session, tenant_id=tenant.id, reference="support-bot:2")
    with pytest.raises(NotFoundError):
        delete_adapter_version(
            session=session, store=store, tenant_id=tenant.id, name="support-bot", version=7
        )


def test_delete_adapter_and_reupload_never_reuses_numbers(session, store, policy, peft_adapter):
    tenant = create_tenant(session=session, name="acme", max_adapters=1)
    _upload(session, store, tenant, policy, peft_adapter)
    _upload(session, store, tenant, policy, peft_adapter)
    adapter = delete_adapter(session=session, store=store, tenant_id=tenant.id, name="support-bot")
    assert adapter.deleted_at is not None
    assert list(store.list()) == []
    assert list_adapters(session=session, tenant_id=tenant.id) == []
    with pytest.raises(NotFoundError):
        resolve_adapter(session=session, tenant_id=tenant.id, reference="support-bot")
    # A deleted adapter frees its quota slot; its name can come back, numbering continues.
    revived = _upload(session, store, tenant, policy, peft_adapter)
    assert revived.version == 3
    versions = list_adapter_versions(
        session=session, adapter_id=revived.adapter_id, include_deleted=True
    )
    assert [(v.version, v.status) for v in versions] == [
        (1, STATUS_DELETED),
        (2, STATUS_DELETED),
        (3, STATUS_READY),
    ]


class FailingStore:
    """Wraps a store; the put of the weights fails."""

    def __init__(self, inner):
        self.inner = inner

    def put(self, key, source):
        if key.endswith("adapter_model.safetensors"):
            raise OSError("connection reset")
        self.inner.put(key, source)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_failed_object_write_leaves_no_row_and_no_objects(session, store, policy, peft_adapter):
    tenant = create_tenant(session=session, name="acme", max_adapters=1)
    with pytest.raises(OSError, match="connection reset"):
        _upload(session, FailingStore(store), tenant, policy, peft_adapter)
    assert list(store.list()) == []
    # The adapter the failed upload reserved is released: not listed, not using the quota.
    assert list_adapters(session=session, tenant_id=tenant.id) == []
    assert _upload(session, store, tenant, policy, peft_adapter, name="other").version == 1


def test_failed_upload_keeps_an_adapter_that_has_versions(session, store, policy, peft_adapter):
    tenant = create_tenant(session=session, name="acme")
    _upload(session, store, tenant, policy, peft_adapter)
    with pytest.raises(OSError, match="connection reset"):
        _upload(session, FailingStore(store), tenant, policy, peft_adapter)
    [adapter] = list_adapters(session=session, tenant_id=tenant.id)
    versions = list_adapter_versions(session=session, adapter_id=adapter.id)
    assert [v.version for v in versions] == [1]
    assert _upload(session, store, tenant, policy, peft_adapter).version == 3  # 2 was spent


def test_upload_into_an_adapter_deleted_meanwhile_conflicts(
    session, store, policy, peft_adapter, monkeypatch
):
    """A DELETE that lands between an upload's object writes and its row: the upload fails
    with a conflict and removes its objects, instead of adding an unreachable version."""
    tenant = create_tenant(session=session, name="acme")
    _upload(session, store, tenant, policy, peft_adapter)
    real_create = lifecycle.create_adapter_version

    def delete_first(**kwargs):
        delete_adapter(session=session, store=store, tenant_id=tenant.id, name="support-bot")
        return real_create(**kwargs)

    monkeypatch.setattr(lifecycle, "create_adapter_version", delete_first)
    with pytest.raises(ConflictError, match="deleted while this version was uploaded"):
        _upload(session, store, tenant, policy, peft_adapter)
    assert list(store.list()) == []
    assert list_adapters(session=session, tenant_id=tenant.id) == []


def test_failed_row_commit_removes_the_objects(session, store, policy, peft_adapter, monkeypatch):
    tenant = create_tenant(session=session, name="acme")

    def refuse(**_kwargs):
        raise ConflictError("simulated")

    monkeypatch.setattr(lifecycle, "create_adapter_version", refuse)
    with pytest.raises(ConflictError, match="simulated"):
        _upload(session, store, tenant, policy, peft_adapter)
    assert list(store.list()) == []


def test_concurrent_uploads_get_distinct_versions(session_factory, store, policy, peft_adapter):
    with session_factory() as session:
        tenant = create_tenant(session=session, name="acme")
    results, errors = [], []

    def upload():
        try:
            with session_factory() as own_session:
                results.append(_upload(own_session, store, tenant, policy, peft_adapter).version)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == [1, 2, 3, 4]
    with session_factory() as session:
        adapters = list_adapters(session=session, tenant_id=tenant.id)
        assert len(adapters) == 1
        versions = list_adapter_versions(session=session, adapter_id=adapters[0].id)
        assert [v.version for v in versions] == [1, 2, 3, 4]
    assert len(list(store.list())) == 8
